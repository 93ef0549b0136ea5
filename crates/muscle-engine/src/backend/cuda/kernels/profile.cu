// The profiler's spin (`muscle-bench --profile`): the GPU waits `ns` nanoseconds of its global
// timer. Queued ahead of a run of calls, it gives the host time to queue them all before the GPU
// reaches them, so the events between the calls time the GPU's work alone, not the host's issuing.
// The emulator has no timer to read and returns at once.
extern "C" __global__ void profile_spin(long long ns) {
#ifndef MUSCLE_EMU
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while ((long long)(now - start) < ns);
#endif
}
