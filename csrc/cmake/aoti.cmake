# CDD_WITH_AOTI=ON: the AOTInductor backend (src/backends/aoti_backend.cpp), which runs an
# engine's model.pt2 through libtorch's package loader. Torch is found from an installed torch
# (the Python wheel: <site-packages>/torch holds include/, lib/ and version.py) or a libtorch
# directory, not through TorchConfig.cmake: that config looks for the CUDA toolkit (nvcc) when
# the torch is a CUDA build and sets no flag we need, while all this needs is the headers, three
# shared libraries and the version string.
#
#   CDD_TORCH_ROOT   the torch package directory or a libtorch directory; empty: Torch_DIR
#                    (<root>/share/cmake/Torch) when given, else `python -c "import torch"`
#
# Only the one source file sees the torch headers (C++20, which they need; tens of seconds to
# compile), as an OBJECT library whose objects go into libcdd_engine. The library is linked
# against libtorch.so, libtorch_cpu.so and libc10.so (a CUDA torch's libtorch.so pulls in its
# CUDA part, where the CUDA package runner lives) and finds them at run time next to its own
# install ($ORIGIN/../../torch/lib: the torch wheel in the same site-packages) or where they
# were at build time.
set(CDD_TORCH_ROOT "" CACHE PATH "torch package or libtorch directory for CDD_WITH_AOTI (empty: from Torch_DIR or Python)")

if(NOT CDD_WITH_AOTI)
  return()
endif()

set(_cdd_torch "${CDD_TORCH_ROOT}")
if(NOT _cdd_torch AND Torch_DIR)
  get_filename_component(_cdd_torch "${Torch_DIR}/../../.." ABSOLUTE)
endif()
find_package(Python3 COMPONENTS Interpreter QUIET)
if(NOT _cdd_torch AND Python3_FOUND)
  execute_process(COMMAND "${Python3_EXECUTABLE}" -c "import torch, os; print(os.path.dirname(torch.__file__))"
                  OUTPUT_VARIABLE _cdd_torch OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
endif()
set(_cdd_loader_h "torch/csrc/inductor/aoti_package/model_package_loader.h")
if(NOT _cdd_torch OR NOT EXISTS "${_cdd_torch}/include/${_cdd_loader_h}")
  message(FATAL_ERROR "CDD_WITH_AOTI=ON needs an installed torch with the AOTInductor package loader "
                      "(include/${_cdd_loader_h}): pass -DCDD_TORCH_ROOT=$(python -c \"import torch, os; "
                      "print(os.path.dirname(torch.__file__))\") or -DTorch_DIR=<torch>/share/cmake/Torch "
                      "(looked in \"${_cdd_torch}\")")
endif()

# the full version string (e.g. 2.13.0+cpu): an aoti engine's aoti.torch_version must equal it.
# The wheel writes it to version.py, a libtorch archive to build-version.
set(CDD_TORCH_VERSION "")
if(EXISTS "${_cdd_torch}/version.py")
  file(STRINGS "${_cdd_torch}/version.py" _cdd_tv_line REGEX "^__version__")
  string(REGEX MATCH "['\"]([^'\"]+)['\"]" _cdd_tv_match "${_cdd_tv_line}")
  set(CDD_TORCH_VERSION "${CMAKE_MATCH_1}")
elseif(EXISTS "${_cdd_torch}/build-version")
  file(STRINGS "${_cdd_torch}/build-version" CDD_TORCH_VERSION LIMIT_COUNT 1)
endif()
if(NOT CDD_TORCH_VERSION)
  message(FATAL_ERROR "CDD_WITH_AOTI: cannot read the torch version (${_cdd_torch}/version.py or build-version)")
endif()

# torch >= 2.7 is built with the C++11 std::string ABI, as are this library and OpenVINO; an
# older (pre-C++11 ABI) torch cannot share std::string with them in one library
if(Python3_FOUND)
  execute_process(COMMAND "${Python3_EXECUTABLE}" -c "import torch; print(int(torch.compiled_with_cxx11_abi()))"
                  OUTPUT_VARIABLE _cdd_torch_abi OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(_cdd_torch_abi STREQUAL "0")
    message(FATAL_ERROR "CDD_WITH_AOTI: this torch was built with the pre-C++11 std::string ABI "
                        "(_GLIBCXX_USE_CXX11_ABI=0); libcdd_engine and OpenVINO use the C++11 ABI: use torch >= 2.7")
  endif()
endif()

set(_cdd_torch_libs "")
foreach(_lib torch torch_cpu c10)
  find_library(_cdd_lib_${_lib} NAMES ${_lib} PATHS "${_cdd_torch}/lib" NO_DEFAULT_PATH)
  if(NOT _cdd_lib_${_lib})
    message(FATAL_ERROR "CDD_WITH_AOTI: lib${_lib}.so not found in ${_cdd_torch}/lib")
  endif()
  list(APPEND _cdd_torch_libs "${_cdd_lib_${_lib}}")
endforeach()
set(CDD_TORCH_LIBDIR "${_cdd_torch}/lib")
message(STATUS "cdd_engine: AOTInductor backend against torch ${CDD_TORCH_VERSION} (${_cdd_torch})")

add_library(cdd_aoti OBJECT src/backends/aoti_backend.cpp)
target_compile_features(cdd_aoti PRIVATE cxx_std_20)  # the torch headers need C++20
set_target_properties(cdd_aoti PROPERTIES POSITION_INDEPENDENT_CODE ON CXX_EXTENSIONS OFF)
target_include_directories(cdd_aoti PRIVATE include src)
target_include_directories(cdd_aoti SYSTEM PRIVATE "${_cdd_torch}/include"
                           "${_cdd_torch}/include/torch/csrc/api/include")
target_compile_definitions(cdd_aoti PRIVATE "CDD_TORCH_VERSION=\"${CDD_TORCH_VERSION}\"" _GLIBCXX_USE_CXX11_ABI=1)
target_compile_options(cdd_aoti PRIVATE -Wall -Wextra)
if(CDD_WITH_CUDA)
  # the CUDA path uses the driver loader and the GPU kernels of src/cuda (their headers need cuda.h)
  target_compile_definitions(cdd_aoti PRIVATE CDD_WITH_CUDA)
  target_include_directories(cdd_aoti SYSTEM PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
endif()

target_sources(cdd_engine PRIVATE $<TARGET_OBJECTS:cdd_aoti>)
target_compile_definitions(cdd_engine PRIVATE CDD_WITH_AOTI)
# --no-as-needed: libtorch.so is linked for what it loads (a CUDA torch's libtorch_cuda.so, which
# registers the CUDA package runner), not for symbols we call, so the linker must keep it
target_link_libraries(cdd_engine PRIVATE "-Wl,--no-as-needed" ${_cdd_torch_libs} "-Wl,--as-needed" ${CMAKE_DL_LIBS})
