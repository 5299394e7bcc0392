// Host replacement of <c10/cuda/CUDAStream.h>: see CUDAGuard.h.
#pragma once
#include "CUDAGuard.h"
