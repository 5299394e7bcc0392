// Host replacement of <cuda_runtime_api.h>: csrc/simt/simt.h (the test suite's cuda_sim backend).
#pragma once
#include "../simt.h"
