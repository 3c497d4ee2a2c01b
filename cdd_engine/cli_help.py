"""The help formatter shared by every ``cdd-engine`` subcommand (cli.py and cli_engine.py)."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples' line breaks and shows each option's default.

    Not for defaults that say nothing (None, an off flag, an empty list) or that the help text already explains.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == [] or "default" in text.lower():
            return action.help
        return super()._get_help_string(action)
