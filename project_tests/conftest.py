"""The project's own tests, by wing (basics, common, lab, grading, suite, benchmarks): they import the packages directly."""

import os

import torch

# The tests' tensors are small: one thread is faster than a pool that spins on a shared 2-core machine.
torch.set_num_threads(int(os.environ.get("CS336_TEST_THREADS", "1")))
