//! Process hygiene for a process that holds keys in memory.

/// Core dumps would write memory, keys included, to disk: turn them off
/// (RLIMIT_CORE = 0, and not dumpable, which also blocks ptrace by other
/// unprivileged users).
pub fn disable_core_dumps() -> std::io::Result<()> {
    let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: setrlimit and prctl take plain values and touch no Rust memory.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A panic is logged with where it happened, never with its message: a
/// message can be built from whatever the panicking code held, and the
/// server's log must not carry secret material.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        tracing::error!(at = %at, thread = %thread, "panic (its message is not logged)");
    }));
}

/// Locks all current and future pages in RAM so keys never reach swap.
///
/// `MCL_ONFAULT` locks each page when it is first touched instead of
/// populating whole mappings up front (thread stacks, allocator arenas), so
/// memory in use stays what the process actually uses. Kernels older than
/// 4.4 do not know the flag; there we fall back to plain locking.
pub fn lock_memory() -> std::io::Result<()> {
    // SAFETY: mlockall takes flags only.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) } == 0 {
        return Ok(());
    }
    // SAFETY: as above.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Restores SIGPIPE's default action for the CLI, so that writing to a
/// closed pipe (`keybridge kv list ... | head -1`) ends the process quietly,
/// as it ends other Unix tools (the shell reports 141), instead of a
/// failed `println!` panicking. The server keeps Rust's default (ignored),
/// so a peer that goes away is an error on its socket, not the end of the
/// process. The CLI's runtime threads, which do its network IO, block the
/// signal ([`block_sigpipe`]): a server that hangs up is an error there,
/// and only the main thread's writes to stdout end the process.
pub fn default_sigpipe() {
    // SAFETY: signal() with SIG_DFL installs no handler and touches no Rust
    // memory; it runs before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Raises the open-file limit to its hard maximum (each connection is a
/// descriptor; the default soft limit of 1024 is below the default
/// `max_connections`) and returns the limit in force.
pub fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit fill and read a plain struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Blocks SIGPIPE in the calling thread: a write to a socket the peer
/// closed returns EPIPE instead of raising it (run on every runtime thread
/// of the CLI; sockets written with `writev` get no MSG_NOSIGNAL).
pub fn block_sigpipe() {
    // SAFETY: the set is a local value initialised by sigemptyset; the
    // calls change only this thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_open_file_limit_is_raised_to_its_maximum() {
        let got = super::raise_open_files();
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit fills a plain struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!((got, lim.rlim_cur), (lim.rlim_max, lim.rlim_max));
    }

    /// A panic's message never reaches the log; where it happened does.
    #[test]
    fn a_panic_is_logged_without_its_message() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || sink.clone()).with_ansi(false).finish();
        super::quiet_panics();
        tracing::subscriber::with_default(subscriber, || {
            let _ = std::panic::catch_unwind(|| panic!("the password is hunter2"));
        });
        let _ = std::panic::take_hook();
        let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("panic (its message is not logged)") && log.contains("hygiene.rs:"), "{log}");
        assert!(!log.contains("hunter2"), "{log}");
    }

    #[test]
    fn core_dumps_are_off_afterwards() {
        super::disable_core_dumps().unwrap();
        let mut lim = libc::rlimit { rlim_cur: 1, rlim_max: 1 };
        // SAFETY: getrlimit writes into the struct we own.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, 0);
    }
}
