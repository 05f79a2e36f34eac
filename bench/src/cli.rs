//! What the benchmarks' command lines share.

use std::time::Duration;

/// A whole number of seconds on the command line (`--idle-seconds 60`).
pub fn seconds(arg: &str) -> Result<Duration, String> {
    arg.parse::<u64>().map(Duration::from_secs).map_err(|e| format!("{arg:?} is not a whole number of seconds: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_whole_numbers() {
        assert_eq!(seconds("60"), Ok(Duration::from_secs(60)));
        assert!(seconds("1.5").is_err());
        assert!(seconds("-1").is_err());
    }
}
