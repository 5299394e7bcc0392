// Host replacement of <cuda_runtime.h>: csrc/simt/simt.h (the cuda_sim test backend).
#pragma once
#include "../simt.h"
