//! The engine's CUDA kernels, compiled as C++ for the CPU, launched the way the CUDA driver
//! launches them (a name, a grid, a block, dynamic shared memory, and a pointer to each argument).
//!
//! For tests only: with it the engine's CUDA backend runs every verb and whole training steps on a
//! machine without a GPU (`Cuda::emulated`), so its kernels' arithmetic and indexing and the backend's
//! orchestration are checked against the CPU backend in every `cargo test`. Device addresses are host
//! addresses here. Each block's threads are fibers that switch at barriers (see `cpp/emu.hpp`): what
//! this does not test is timing, or a race that needs another interleaving than the two (forward and
//! reverse thread order, alternating per launch) it tries.

use std::ffi::{c_char, c_void, CString};

extern "C" {
    fn muscle_emu_launch(name: *const c_char, grid: *const u32, block: *const u32, shared_bytes: u32,
                         params: *mut *mut c_void, n_params: u32, error: *mut c_char, error_len: usize) -> i32;
}

/// Runs kernel `name` over `grid` blocks of `block` threads. Each argument is an 8-byte slot holding
/// the value in its low bytes (a pointer, an integer, a float's bits), as `cuLaunchKernel` reads them.
///
/// # Safety
/// Every pointer argument must address host memory that covers what the kernel reads and writes for
/// this grid, and each slot must hold a value of the type the kernel declares at that position.
pub unsafe fn launch(name: &str, grid: (u32, u32, u32), block: (u32, u32, u32), shared_bytes: u32,
                     args: &mut [u64]) -> Result<(), String> {
    let cname = CString::new(name).map_err(|_| format!("kernel name {name:?} holds a NUL byte"))?;
    let mut params: Vec<*mut c_void> = args.iter_mut().map(|s| s as *mut u64 as *mut c_void).collect();
    let (g, b) = ([grid.0, grid.1, grid.2], [block.0, block.1, block.2]);
    let mut error = vec![0u8; 512];
    let rc = muscle_emu_launch(cname.as_ptr(), g.as_ptr(), b.as_ptr(), shared_bytes, params.as_mut_ptr(),
                               params.len() as u32, error.as_mut_ptr() as *mut c_char, error.len());
    if rc == 0 {
        return Ok(());
    }
    let end = error.iter().position(|&c| c == 0).unwrap_or(error.len());
    Err(String::from_utf8_lossy(&error[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::launch;

    fn ptr<T>(v: &mut [T]) -> u64 {
        v.as_mut_ptr() as u64
    }

    #[test]
    fn a_grid_stride_kernel_covers_every_element() {
        let n = 1000usize;
        let mut x = vec![0.0f32; n];
        let mut args = [ptr(&mut x), n as u64, 2.5f32.to_bits() as u64];
        unsafe { launch("fill_f32", (3, 1, 1), (64, 1, 1), 0, &mut args) }.unwrap();
        assert!(x.iter().all(|&v| v == 2.5));
    }

    #[test]
    fn block_reductions_and_warp_shuffles_are_exact() {
        // dots_many_f32: f64 warp shuffles, shared memory and a barrier; one partial per block
        let n = 5000usize;
        let a: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..n).map(|i| (i % 5) as f32 * 0.5).collect();
        let mut partial = vec![0.0f64; 4];
        // one pair owning blocks 0..4, then its record
        let table = [0, 4, a.as_ptr() as u64, b.as_ptr() as u64, n as u64];
        let mut args = [table.as_ptr() as u64, 1, ptr(&mut partial)];
        unsafe { launch("dots_many_f32", (4, 1, 1), (256, 1, 1), 0, &mut args) }.unwrap();
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert_eq!(partial.iter().sum::<f64>(), want);
    }

    #[test]
    fn barriers_publish_shared_memory_in_either_thread_order() {
        for _ in 0..2 {
            // launches alternate forward and reverse thread order
            let mut out = vec![0.0f32; 3 * 64];
            let mut args = [ptr(&mut out)];
            unsafe { launch("emu_selftest_barrier", (3, 1, 1), (64, 1, 1), 0, &mut args) }.unwrap();
            for (i, v) in out.iter().enumerate() {
                assert_eq!(*v, 42.0 + (i / 64) as f32, "thread {i}");
            }
        }
    }

    #[test]
    fn shuffles_read_the_right_lane() {
        let mut x: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let mut args = [ptr(&mut x)];
        unsafe { launch("emu_selftest_shuffle_down", (1, 1, 1), (64, 1, 1), 0, &mut args) }.unwrap();
        for (i, v) in x.iter().enumerate() {
            let want = if i % 32 == 31 { i } else { i + 1 };
            assert_eq!(*v, want as f32, "lane {i}");
        }
    }

    #[test]
    fn a_shuffle_that_exited_lanes_never_reach_is_an_error() {
        let mut x = vec![1.0f32; 32];
        let mut args = [ptr(&mut x)];
        let e = unsafe { launch("emu_selftest_exited_lane", (1, 1, 1), (32, 1, 1), 0, &mut args) }.unwrap_err();
        assert!(e.contains("16 lanes wait at a warp exchange that 16 exited"), "{e}");
    }

    /// In a child process (the fault ends it): a buffer that ends at an inaccessible page, as the
    /// engine's emulated buffers do, and a kernel that writes one element past it.
    #[test]
    fn a_kernel_that_overruns_its_buffer_is_named() {
        const CHILD: &str = "MUSCLE_EMU_OVERRUN_CHILD";
        if std::env::var_os(CHILD).is_some() {
            unsafe {
                let page = 4096usize.max(libc::sysconf(libc::_SC_PAGESIZE) as usize);
                let map = libc::mmap(std::ptr::null_mut(), 2 * page, libc::PROT_READ | libc::PROT_WRITE,
                                     libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
                assert_ne!(map, libc::MAP_FAILED);
                libc::mprotect((map as *mut u8).add(page) as *mut libc::c_void, page, libc::PROT_NONE);
                let n = 16usize;
                let x = (map as *mut u8).add(page - 4 * n) as u64;
                let mut args = [x, n as u64];
                let _ = launch("emu_selftest_overrun", (1, 1, 1), (32, 1, 1), 0, &mut args);
            }
            panic!("the overrun did not fault");
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::a_kernel_that_overruns_its_buffer_is_named", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the child must fail: {err}");
        assert!(err.contains("kernel emu_selftest_overrun, block (0,0,0) thread (0,0,0)")
                && err.contains("outside its buffers"), "{err}");
    }

    #[test]
    fn misuse_is_an_error_not_a_hang() {
        let mut x = vec![0.0f32; 4];
        let mut args = [ptr(&mut x), 4];
        let e = unsafe { launch("fill_f32", (1, 1, 1), (32, 1, 1), 0, &mut args) }.unwrap_err();
        assert!(e.contains("launched with 2 arguments, declared with 3"), "{e}");
        let e = unsafe { launch("no_such_kernel", (1, 1, 1), (32, 1, 1), 0, &mut []) }.unwrap_err();
        assert!(e.contains("no kernel named no_such_kernel"), "{e}");
        let mut args = [ptr(&mut x), 4, 0];
        let e = unsafe { launch("fill_f32", (1, 1, 1), (2048, 1, 1), 0, &mut args) }.unwrap_err();
        assert!(e.contains("invalid launch configuration"), "{e}");
    }
}
