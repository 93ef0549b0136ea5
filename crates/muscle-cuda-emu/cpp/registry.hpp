// The kernels the build script found in the sources, each behind a trampoline that unpacks a
// cuLaunchKernel-style argument array (pointers to each argument) into the kernel's parameters.
#pragma once

struct EmuKernel {
    const char* name;
    void (*body)(void**);
    int params;
};

// null when no kernel has that name
const EmuKernel* find_kernel(const char* name);
