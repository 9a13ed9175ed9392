//! When a joining shard's part of the startup snapshot is settled (SPEC
//! 4.6), as a pure decision over one round of answers and the time.

/// Without a snapshot from any peer for this long, the node serves alone.
pub const STARTUP_ALONE_MS: u64 = 10_000;

/// What one peer answered to a snapshot request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// It served the snapshot (and it was merged).
    Served,
    /// 503: it is starting too.
    Starting,
    /// No answer, or a useless one.
    Nothing,
}

/// What to do after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Loaded: ready.
    Loaded,
    /// Every peer that answered is starting too (the cluster starts
    /// together): ready with what arrives.
    StartingTogether,
    /// No peer served one for `STARTUP_ALONE_MS`: ready alone.
    Alone,
    /// Try again after the retry pause.
    Retry,
}

/// Decides after a round of `answers`, `waited_ms` after the first.
pub fn decide(answers: &[Answer], waited_ms: u64) -> Decision {
    if answers.contains(&Answer::Served) {
        Decision::Loaded
    } else if answers.contains(&Answer::Starting) {
        Decision::StartingTogether
    } else if waited_ms >= STARTUP_ALONE_MS {
        Decision::Alone
    } else {
        Decision::Retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Answer::*;

    #[test]
    fn decisions() {
        assert_eq!(decide(&[Nothing, Served], 0), Decision::Loaded);
        assert_eq!(decide(&[Starting, Nothing], 0), Decision::StartingTogether);
        assert_eq!(decide(&[Nothing, Nothing], 9_999), Decision::Retry);
        assert_eq!(decide(&[Nothing, Nothing], 10_000), Decision::Alone);
        assert_eq!(decide(&[], 0), Decision::Retry, "no peers answered yet");
    }
}
