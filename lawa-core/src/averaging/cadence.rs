/// When an averager takes an update: at step `start` and every `every` steps after it. The one
/// rule LAWA (snapshots), EMA (updates) and SWA (samples) share, so `start` and `every` mean the
/// same thing for all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cadence {
    pub(crate) start: u64,
    pub(crate) every: u64,
}

impl Cadence {
    /// Every `every` steps (at least 1) from `start` on.
    pub(crate) fn new(start: u64, every: u64) -> Self {
        Cadence { start, every }
    }

    /// Whether an update is due after optimizer step `step`.
    pub(crate) fn is_due(&self, step: u64) -> bool {
        step >= self.start && (step - self.start).is_multiple_of(self.every)
    }

    /// The first step (counting from 1, the first optimizer step) at which an update is due.
    pub(crate) fn first_step(&self) -> u64 {
        if self.start >= 1 {
            self.start
        } else {
            self.every
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_steps_and_first_step() {
        let due = |c: Cadence| (1..=30).filter(|&s| c.is_due(s)).collect::<Vec<_>>();
        assert_eq!(due(Cadence::new(0, 10)), [10, 20, 30]);
        assert_eq!(due(Cadence::new(15, 10)), [15, 25]);
        assert_eq!(due(Cadence::new(0, 1)).len(), 30);
        assert_eq!(Cadence::new(0, 10).first_step(), 10);
        assert_eq!(Cadence::new(15, 10).first_step(), 15);
        assert_eq!(Cadence::new(0, 1).first_step(), 1);
    }
}
