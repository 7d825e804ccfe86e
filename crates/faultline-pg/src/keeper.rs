//! Spawning server processes that cannot outlive this process.
//!
//! Linux's `PR_SET_PDEATHSIG` sends a child a signal when the *thread* that forked it exits. So
//! children are forked from one keeper thread that lives as long as the process: if the process
//! dies, however it dies, the kernel sends each server SIGQUIT (Postgres' immediate shutdown).
//! Forking from whatever thread asked (a test thread, a tokio blocking thread that retires after
//! 10 s idle) would kill the server as soon as that thread ended.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender};
use std::sync::{Mutex, OnceLock};

use nix::sys::signal::Signal;

type Request = (Command, SyncSender<io::Result<Child>>);

static KEEPER: OnceLock<Mutex<Sender<Request>>> = OnceLock::new();

/// Spawn `command` so that it receives `signal` when this process dies, however it dies (for
/// Postgres, SIGQUIT: immediate shutdown; for other children, SIGKILL or SIGTERM). It is forked
/// from a keeper thread that lives as long as the process, with `PR_SET_PDEATHSIG` set in
/// `pre_exec`, which std runs after switching uid/gid (a credential change would clear it).
///
/// # Errors
/// The spawn's own I/O error.
pub fn spawn_tied(mut command: Command, signal: Signal) -> io::Result<Child> {
    let parent = std::process::id();
    // SAFETY: the closure only makes async-signal-safe system calls (prctl, getppid, _exit).
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(signal).map_err(io::Error::from)?;
            // The parent may have died between fork and prctl; then nobody would signal us.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = channel::<Request>();
        std::thread::Builder::new()
            .name("faultline-pg-keeper".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // The sender lives in a static, so the loop never ends: park forever rather than
                // let the thread exit (which would signal every child).
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the pg keeper thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = sync_channel(1);
    keeper
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((command, reply_tx))
        .map_err(|_| io::Error::other("the pg keeper thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the pg keeper thread is gone"))?
}
