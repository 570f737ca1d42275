//! libtorch failures that tch reports by panicking (its operations without an `f_` prefix, an
//! allocation that fails among them) turned into errors, so that a command ends with one line
//! saying what to change instead of a C++ stack trace.

use std::cell::Cell;
use std::sync::Once;

use anyhow::{anyhow, Result};
use lawa_cxx::panic_message;

thread_local! {
    /// Set while [`catch`] runs a body on this thread: its panics are reported as errors, so
    /// the panic hook stays quiet about them.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Wraps the process's panic hook once so that it prints nothing for the panics [`catch`] turns
/// into errors: libtorch's, under `catch` (every other panic is printed as before).
fn quiet_hook_for_caught_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !(CATCHING.with(Cell::get) && is_torch_error(panic_message(info.payload()))) {
                previous(info);
            }
        }));
    });
}

/// Whether a panic's text is a libtorch error tch raised (`... Torch("...")`).
fn is_torch_error(text: &str) -> bool {
    text.contains("Torch(\"")
}

/// Runs `body`; a libtorch error tch raised as a panic inside it becomes an error holding
/// libtorch's message on one line, without the C++ frames. Any other panic (a bug) goes on
/// as a panic, printed with its location.
///
/// ```
/// let err = lawa_experiments::torch_panic::catch(|| -> anyhow::Result<()> {
///     let _ = tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu)).view([3]);
///     Ok(())
/// })
/// .unwrap_err();
/// assert!(err.to_string().contains("shape '[3]' is invalid"), "{err}");
/// ```
pub fn catch<T>(body: impl FnOnce() -> Result<T>) -> Result<T> {
    quiet_hook_for_caught_panics();
    let was = CATCHING.with(|c| c.replace(true));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    CATCHING.with(|c| c.set(was));
    match out {
        Ok(result) => result,
        Err(panic) if is_torch_error(panic_message(&*panic)) => {
            Err(anyhow!("{}", libtorch_message(panic_message(&*panic))))
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// libtorch's own message out of tch's panic text (`called Result::unwrap() on an Err value:
/// Torch("MESSAGE\nException raised from ... frame #0 ...")`, the message escaped as Rust's
/// debug form escapes it), on one line as lawa shows libtorch's errors ([`lawa_cxx::fold`]).
fn libtorch_message(text: &str) -> String {
    let inner = text
        .split_once("Torch(\"")
        .map_or(text, |(_, rest)| rest.trim_end_matches("\")"));
    lawa_cxx::fold(&inner.replace("\\n", "\n").replace("\\\"", "\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torch_panic_becomes_its_message_on_one_line_and_other_panics_go_on() {
        let wrapped = "called `Result::unwrap()` on an `Err` value: Torch(\"[enforce fail at \
                       alloc_cpu.cpp:127] data. DefaultCPUAllocator: not enough memory: you \
                       tried to allocate 662364160 bytes.\\nException raised from alloc_cpu at \
                       ...\\nframe #0: c10::ThrowEnforceNotMet\")";
        assert_eq!(
            libtorch_message(wrapped),
            "[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: not enough memory: \
             you tried to allocate 662364160 bytes."
        );
        // A message of several lines keeps them all, on one line, up to the stack trace.
        let two_lines = "Torch(\"The size of a (3) must match\\n the size of b (4)\\nException \
                         raised from check\\nframe #0\")";
        assert_eq!(
            libtorch_message(two_lines),
            "The size of a (3) must match the size of b (4)"
        );
        let err = catch(|| -> Result<()> {
            panic!("called unwrap: Torch(\"boom\\nException raised from x\\nframe #0\")")
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "boom");
        // A panic that is not libtorch's is a bug: it goes on as a panic.
        let bug = std::panic::catch_unwind(|| catch(|| -> Result<()> { panic!("index 3") }));
        let payload = bug.expect_err("the panic went on");
        assert_eq!(panic_message(&*payload), "index 3");
        assert_eq!(catch(|| Ok(7)).unwrap(), 7);
        let err = catch(|| -> Result<()> { Err(anyhow!("as it was")) }).unwrap_err();
        assert_eq!(err.to_string(), "as it was");
        // The flag is back off: a later panic outside `catch` is printed as usual.
        assert!(!CATCHING.with(Cell::get));
    }
}
