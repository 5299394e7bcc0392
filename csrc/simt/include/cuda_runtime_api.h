// Host replacement of <cuda_runtime_api.h>: csrc/simt/simt.h (the cuda_sim test backend).
#pragma once
#include "../simt.h"
