// Host replacement of <cuda_bf16.h>: csrc/simt/simt.h (the cuda_sim test backend).
#pragma once
#include "../simt.h"
