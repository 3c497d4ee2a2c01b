// libcdd_engine: everything a line-inspection program needs. See cdd/engine.hpp.
#pragma once

#include "cdd/engine.hpp"
#include "cdd/error.hpp"
#include "cdd/image.hpp"
#include "cdd/kernels.hpp"
#include "cdd/limits.hpp"
