//! The pause between two looks at a ring while spinning.
//!
//! Spinning must never starve anyone: between two looks the task yields to its runtime (so
//! the host application's tasks run), and every few looks the thread also yields its CPU to
//! the OS (`sched_yield`), so on a machine with more runnable threads than CPUs a spinning
//! engine or node hands its time slice over instead of burning it.

/// Looks between two OS-level yields.
const OS_YIELD_EVERY: u32 = 8;

/// Pauses before look number `spins` of a spin window.
pub(crate) async fn pause(spins: u32) {
    if spins.is_multiple_of(OS_YIELD_EVERY) {
        std::thread::yield_now();
    }
    tokio::task::yield_now().await;
}
