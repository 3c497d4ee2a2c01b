# placeholder until the CUDA / TensorRT parts land
