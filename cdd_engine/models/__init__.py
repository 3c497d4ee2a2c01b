"""Teachers, the RD student and the RD model."""
from .rd import RDModel, build_rd_model, build_student
from .student import Student
from .teachers import (DEFAULT_CPU_TEACHER, RANDOM, TEACHERS, WeightsError, build_teacher,
                       teacher_spec)

__all__ = ["RDModel", "build_rd_model", "build_student", "Student", "TEACHERS", "DEFAULT_CPU_TEACHER",
           "RANDOM", "WeightsError", "build_teacher", "teacher_spec"]
