# GPU parts of libcdd_engine, all optional:
#
#   CDD_WITH_CUDA=ON        GPU pre/post-processing: the Triton kernels of cdd_engine/kernels/aot.py,
#                           compiled ahead of time and embedded; the CUDA driver is loaded at
#                           run time (dlopen), so nothing links libcuda. Host code is compiled
#                           by nvcc (with the static cudart it needs for registration). CDD_AOT_DIR: an existing AOT output; otherwise the AOT
#                           build runs at configure time (needs Python with triton + torch).
#   CDD_WITH_TENSORRT=ON    the TensorRT backend, linked against libnvinfer
#                           (-DTensorRT_ROOT=... or TensorRT_INCLUDE_DIR / TensorRT_LIBRARY).
#   CDD_TENSORRT_COMPILE_ONLY=ON
#                           compile the TensorRT backend against the headers alone (an OBJECT
#                           library, nothing linked): the check for machines without TensorRT.
set(CDD_AOT_DIR "" CACHE PATH "output directory of python -m cdd_engine.kernels.aot (empty: build it)")
set(CDD_AOT_ARCHS "80;90" CACHE STRING "compute capabilities to compile the Triton kernels for")
option(CDD_AOT "embed the Triton AOT kernels in CDD_WITH_CUDA builds" ON)

set(_cdd_need_cuda_headers OFF)
if(CDD_WITH_CUDA OR CDD_WITH_TENSORRT OR CDD_TENSORRT_COMPILE_ONLY)
  set(_cdd_need_cuda_headers ON)
  find_package(CUDAToolkit QUIET)
  if(NOT CUDAToolkit_FOUND)
    message(FATAL_ERROR "the CUDA / TensorRT options need the CUDA toolkit headers (cuda.h): set CUDAToolkit_ROOT")
  endif()
endif()

set(_cdd_cuda_host_sources src/cuda/driver.cpp)
if(CDD_WITH_CUDA)
  include(CheckLanguage)
  check_language(CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    message(FATAL_ERROR "CDD_WITH_CUDA=ON needs nvcc (set CMAKE_CUDA_COMPILER)")
  endif()
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  # nvcc registers every CUDA translation unit's (here empty) fat binary with the runtime,
  # so the static cudart is linked in; it never links the driver either (it dlopens it on
  # first use, which our code never triggers: all calls go through cuda::driver())
  set(CMAKE_CUDA_RUNTIME_LIBRARY Static)
  enable_language(CUDA)
  list(APPEND _cdd_cuda_host_sources src/cuda/gpu_kernels.cpp)
  # host code only (the device code is Triton's), compiled by nvcc as CUDA sources
  set_source_files_properties(${_cdd_cuda_host_sources} PROPERTIES LANGUAGE CUDA)
  target_sources(cdd_engine PRIVATE ${_cdd_cuda_host_sources})
  target_compile_definitions(cdd_engine PRIVATE CDD_WITH_CUDA)
  # no device code of ours is compiled (Triton makes it), so no -arch flags either
  set_target_properties(cdd_engine PROPERTIES CUDA_RUNTIME_LIBRARY Static CUDA_ARCHITECTURES OFF)

  if(CDD_AOT)
    set(_cdd_aot "${CDD_AOT_DIR}")
    if(NOT _cdd_aot)
      set(_cdd_aot "${CMAKE_CURRENT_BINARY_DIR}/aot")
      if(NOT EXISTS "${_cdd_aot}/manifest.sm90.json")
        find_package(Python3 COMPONENTS Interpreter REQUIRED)
        set(_cdd_arch_args "")
        foreach(a IN LISTS CDD_AOT_ARCHS)
          list(APPEND _cdd_arch_args --arch ${a})
        endforeach()
        message(STATUS "cdd_engine: compiling the Triton kernels ahead of time (${CDD_AOT_ARCHS}) ...")
        execute_process(COMMAND "${Python3_EXECUTABLE}" -m cdd_engine.kernels.aot ${_cdd_arch_args} --out "${_cdd_aot}"
                        WORKING_DIRECTORY "${CMAKE_CURRENT_SOURCE_DIR}/.."
                        RESULT_VARIABLE _cdd_aot_rc OUTPUT_VARIABLE _cdd_aot_out ERROR_VARIABLE _cdd_aot_err)
        if(NOT _cdd_aot_rc EQUAL 0)
          message(FATAL_ERROR "the Triton AOT build failed (pass -DCDD_AOT=OFF to build without GPU kernels, "
                              "or -DCDD_AOT_DIR=...):\n${_cdd_aot_err}")
        endif()
      endif()
    endif()
    file(GLOB _cdd_aot_files "${_cdd_aot}/manifest.sm*.json" "${_cdd_aot}/*.cubin" "${_cdd_aot}/*.ptx")
    find_package(Python3 COMPONENTS Interpreter REQUIRED)
    add_custom_command(
      OUTPUT "${CMAKE_CURRENT_BINARY_DIR}/aot_kernels.cpp"
      COMMAND "${Python3_EXECUTABLE}" "${CMAKE_CURRENT_SOURCE_DIR}/cmake/embed_aot.py"
              --aot-dir "${_cdd_aot}" --out "${CMAKE_CURRENT_BINARY_DIR}/aot_kernels.cpp"
      DEPENDS ${_cdd_aot_files} "${CMAKE_CURRENT_SOURCE_DIR}/cmake/embed_aot.py"
      COMMENT "embedding the Triton AOT kernels")
    target_sources(cdd_engine PRIVATE "${CMAKE_CURRENT_BINARY_DIR}/aot_kernels.cpp")
    set_source_files_properties("${CMAKE_CURRENT_BINARY_DIR}/aot_kernels.cpp" PROPERTIES COMPILE_OPTIONS "-O0")
    target_include_directories(cdd_engine PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}/src/cuda")
    target_compile_definitions(cdd_engine PRIVATE CDD_AOT_KERNELS)
  endif()
endif()

if(CDD_WITH_TENSORRT OR CDD_TENSORRT_COMPILE_ONLY)
  find_path(TensorRT_INCLUDE_DIR NvInferRuntime.h
            HINTS ${TensorRT_ROOT} $ENV{TensorRT_ROOT} PATH_SUFFIXES include)
  if(NOT TensorRT_INCLUDE_DIR)
    message(FATAL_ERROR "TensorRT headers (NvInferRuntime.h) not found: pass -DTensorRT_ROOT=<dir with include/>")
  endif()
  message(STATUS "cdd_engine: TensorRT headers in ${TensorRT_INCLUDE_DIR}")
endif()

if(CDD_WITH_TENSORRT)
  find_library(TensorRT_LIBRARY nvinfer HINTS ${TensorRT_ROOT} $ENV{TensorRT_ROOT} PATH_SUFFIXES lib lib64)
  if(NOT TensorRT_LIBRARY)
    message(FATAL_ERROR "libnvinfer not found: pass -DTensorRT_ROOT=..., or use CDD_TENSORRT_COMPILE_ONLY "
                        "for a compile check without the libraries")
  endif()
  target_sources(cdd_engine PRIVATE src/backends/tensorrt_backend.cpp)
  if(NOT CDD_WITH_CUDA)
    target_sources(cdd_engine PRIVATE src/cuda/driver.cpp)
  endif()
  target_include_directories(cdd_engine SYSTEM PRIVATE ${TensorRT_INCLUDE_DIR})
  target_compile_definitions(cdd_engine PRIVATE CDD_WITH_TENSORRT)
  target_link_libraries(cdd_engine PRIVATE ${TensorRT_LIBRARY})
elseif(CDD_TENSORRT_COMPILE_ONLY)
  add_library(cdd_tensorrt_check OBJECT src/backends/tensorrt_backend.cpp)
  target_include_directories(cdd_tensorrt_check PRIVATE include src)
  target_include_directories(cdd_tensorrt_check SYSTEM PRIVATE ${TensorRT_INCLUDE_DIR} ${CUDAToolkit_INCLUDE_DIRS})
  target_compile_definitions(cdd_tensorrt_check PRIVATE CDD_WITH_TENSORRT $<$<BOOL:${CDD_WITH_CUDA}>:CDD_WITH_CUDA>)
  target_compile_options(cdd_tensorrt_check PRIVATE -Wall -Wextra)
endif()

if(_cdd_need_cuda_headers)
  target_include_directories(cdd_engine SYSTEM PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  target_link_libraries(cdd_engine PRIVATE ${CMAKE_DL_LIBS})
endif()
