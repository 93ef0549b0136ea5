// The emulator's scheduler: a launch runs its blocks one after another; a block's threads are
// ucontext fibers switched at barriers (see emu.hpp). Errors that would be undefined behaviour on a
// GPU (a warp exchange that a lane of the warp never reaches, a barrier some threads never reach)
// stop the launch with a message instead of hanging.
#include "emu.hpp"
#include "registry.hpp"

#include <csignal>
#include <cstdio>
#include <mutex>
#include <string>
#include <ucontext.h>
#include <unistd.h>
#include <vector>

namespace emu {
thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;

namespace {
enum class State { Run, AtBlock, AtWarp, Done };

struct Fiber {
    ucontext_t ctx;
    State state;
    unsigned long long slot;
};

// 64 KiB per thread: kernels keep a few scalars and small arrays on the stack
constexpr size_t STACK = 64 * 1024;

struct Block {
    ucontext_t scheduler;
    std::vector<Fiber> fibers;
    std::vector<std::vector<char>> stacks;  // reused by every block of every launch on this OS thread
    std::vector<unsigned char> shared;      // dynamic shared memory
    int current = 0;
    int threads = 0;
    void (*body)(void**) = nullptr;
    void** params = nullptr;
    std::string error;
};

thread_local Block* active = nullptr;
thread_local unsigned long long launches = 0;

void fiber_entry() {
    Block* b = active;
    b->body(b->params);
    b->fibers[b->current].state = State::Done;
    swapcontext(&b->fibers[b->current].ctx, &b->scheduler);
}

void wait_as(State s) {
    Block* b = active;
    Fiber& f = b->fibers[b->current];
    f.state = s;
    swapcontext(&f.ctx, &b->scheduler);
}

dim3 index_of(int t, dim3 dim) {
    return dim3{(unsigned)(t % dim.x), (unsigned)((t / dim.x) % dim.y), (unsigned)(t / (dim.x * dim.y))};
}

// Runs one block to the end; false with `b.error` set on a barrier that cannot complete.
bool run_block(Block& b, bool reverse) {
    for (int t = 0; t < b.threads; t++) {
        Fiber& f = b.fibers[t];
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = b.stacks[t].data();
        f.ctx.uc_stack.ss_size = STACK;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_entry, 0);
        f.state = State::Run;
    }
    const int warps = (b.threads + 31) / 32;
    for (;;) {
        for (int k = 0; k < b.threads; k++) {
            const int t = reverse ? b.threads - 1 - k : k;
            if (b.fibers[t].state != State::Run) continue;
            b.current = t;
            thread_idx = index_of(t, block_dim);
            swapcontext(&b.scheduler, &b.fibers[t].ctx);
        }
        int live = 0, at_block = 0;
        for (auto& f : b.fibers) {
            live += f.state != State::Done;
            at_block += f.state == State::AtBlock;
        }
        if (live == 0) return true;
        bool released = false;
        for (int w = 0; w < warps; w++) {
            const int lo = w * 32, hi = std::min(b.threads, lo + 32);
            int waiting = 0, done = 0, elsewhere = 0;
            for (int t = lo; t < hi; t++) {
                const State s = b.fibers[t].state;
                waiting += s == State::AtWarp;
                done += s == State::Done;
                elsewhere += s == State::AtBlock;
            }
            if (waiting == 0) continue;
            if (waiting == hi - lo) {
                for (int t = lo; t < hi; t++) b.fibers[t].state = State::Run;
                released = true;
            } else if (waiting + done + elsewhere == hi - lo) {
                char msg[200];
                std::snprintf(msg, sizeof msg,
                              "block (%u,%u,%u) warp %d: %d lanes wait at a warp exchange that %d exited and %d "
                              "others wait at __syncthreads (a full-mask shuffle needs every lane)",
                              block_idx.x, block_idx.y, block_idx.z, w, waiting, done, elsewhere);
                b.error = msg;
                return false;
            }
        }
        if (released) continue;
        if (at_block == live) {
            // threads that returned count as arrived (an early return of a whole row or block)
            for (auto& f : b.fibers)
                if (f.state == State::AtBlock) f.state = State::Run;
            continue;
        }
        b.error = "a barrier that cannot complete (threads wait at different barriers)";
        return false;
    }
}
// What runs now, for the fault handler: the engine's emulated buffers end at a guard page, so a
// kernel reading or writing past a buffer faults; the handler names the kernel, block and thread.
thread_local const char* running_kernel = nullptr;
struct sigaction previous_segv;

void on_fault(int sig, siginfo_t* info, void*) {
    Block* b = active;
    if (!running_kernel || !b) {
        // not an emulated kernel: hand the fault to whoever handled it before (Rust's stack-overflow report)
        sigaction(SIGSEGV, &previous_segv, nullptr);
        return;
    }
    char msg[400];
    const int n = std::snprintf(msg, sizeof msg,
                                "muscle-cuda-emu: kernel %s, block (%u,%u,%u) thread (%u,%u,%u), touched address %p outside "
                                "its buffers (or overflowed its 64 KiB stack)\n",
                                running_kernel, block_idx.x, block_idx.y, block_idx.z, thread_idx.x, thread_idx.y,
                                thread_idx.z, info ? info->si_addr : nullptr);
    if (n > 0) (void)!write(2, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    _exit(128 + sig);
}

// Installs the handler once per process, and an alternate signal stack once per OS thread (a fault
// may come from a fiber's small stack).
void watch_faults() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa {};
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &previous_segv);
    });
    thread_local std::vector<char> alt(64 * 1024);
    thread_local bool set = false;
    if (!set) {
        stack_t st {};
        st.ss_sp = alt.data();
        st.ss_size = alt.size();
        sigaltstack(&st, nullptr);
        set = true;
    }
}
}  // namespace

int lane() { return active->current & 31; }

void sync_block() { wait_as(State::AtBlock); }

void sync_warp() { wait_as(State::AtWarp); }

unsigned long long exchange(unsigned long long bits, int src) {
    Block* b = active;
    const int me = b->current;
    b->fibers[me].slot = bits;
    wait_as(State::AtWarp);
    const int from = (me & ~31) + src;
    // a lane past the block's last thread does not exist: CUDA leaves the value undefined
    const unsigned long long got = from < b->threads ? b->fibers[from].slot : 0xdeadbeefdeadbeefull;
    wait_as(State::AtWarp);
    return got;
}

void* dynamic_shared() { return active->shared.data(); }
}  // namespace emu

extern "C" int muscle_emu_launch(const char* name, const unsigned* grid, const unsigned* block, unsigned shared_bytes,
                                 void** params, unsigned n_params, char* error, size_t error_len) {
    auto fail = [&](const std::string& m) {
        std::snprintf(error, error_len, "%s", m.c_str());
        return 1;
    };
    const EmuKernel* k = find_kernel(name);
    if (!k) return fail(std::string("no kernel named ") + name);
    if ((unsigned)k->params != n_params) {
        return fail(std::string(name) + ": launched with " + std::to_string(n_params) + " arguments, declared with " +
                    std::to_string(k->params));
    }
    const unsigned threads = block[0] * block[1] * block[2];
    if (threads == 0 || threads > 1024 || grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[1] > 65535 ||
        grid[2] > 65535) {
        return fail(std::string(name) + ": invalid launch configuration");
    }
    thread_local emu::Block b;
    if (b.stacks.size() < threads) b.stacks.resize(threads, std::vector<char>(emu::STACK));
    b.fibers.assign(threads, emu::Fiber{});
    b.threads = (int)threads;
    b.body = k->body;
    b.params = params;
    b.shared.assign(shared_bytes + 16, 0xA5);  // not zero: a kernel must not rely on it being cleared
    b.error.clear();
    emu::Block* outer = emu::active;
    emu::active = &b;
    emu::block_dim = dim3{block[0], block[1], block[2]};
    emu::grid_dim = dim3{grid[0], grid[1], grid[2]};
    const bool reverse = (emu::launches++ & 1) != 0;
    emu::watch_faults();
    emu::running_kernel = k->name;
    bool ok = true;
    for (unsigned z = 0; ok && z < grid[2]; z++)
        for (unsigned y = 0; ok && y < grid[1]; y++)
            for (unsigned x = 0; ok && x < grid[0]; x++) {
                emu::block_idx = dim3{x, y, z};
                ok = emu::run_block(b, reverse);
            }
    emu::active = outer;
    emu::running_kernel = nullptr;
    return ok ? 0 : fail(std::string(name) + ": " + b.error);
}
