//! Durations in the config file, flags and chart: humantime strings
//! ("500ms", "1m 30s"), their JSON Schema, and the units behind both.

use std::time::Duration;

/// The units `humantime` accepts, with their length in seconds: the one
/// list behind the schema's pattern, the chart's `roster.seconds` helper
/// and `scripts/kit.py` (a test pins the helper to it and it to humantime).
/// Longer spellings first, as the pattern tries them in order.
pub const DURATION_UNITS: &[(&str, f64)] = &[
    ("nanos", 1e-9),
    ("nsec", 1e-9),
    ("ns", 1e-9),
    ("usec", 1e-6),
    ("us", 1e-6),
    ("µs", 1e-6),
    ("millis", 1e-3),
    ("msec", 1e-3),
    ("ms", 1e-3),
    ("seconds", 1.0),
    ("second", 1.0),
    ("secs", 1.0),
    ("sec", 1.0),
    ("s", 1.0),
    ("minutes", 60.0),
    ("minute", 60.0),
    ("mins", 60.0),
    ("min", 60.0),
    ("m", 60.0),
    ("hours", 3600.0),
    ("hour", 3600.0),
    ("hrs", 3600.0),
    ("hr", 3600.0),
    ("h", 3600.0),
    ("days", 86400.0),
    ("day", 86400.0),
    ("d", 86400.0),
    ("weeks", 604800.0),
    ("week", 604800.0),
    ("wks", 604800.0),
    ("wk", 604800.0),
    ("w", 604800.0),
    // humantime's month and year: 30.44 and 365.25 days.
    ("months", 2630016.0),
    ("month", 2630016.0),
    ("M", 2630016.0),
    ("years", 31557600.0),
    ("year", 31557600.0),
    ("yrs", 31557600.0),
    ("yr", 31557600.0),
    ("y", 31557600.0),
];

/// What `humantime` accepts ("500ms", "5s", "1m 30s"), for the JSON Schema.
pub fn duration_pattern() -> String {
    let units: Vec<&str> = DURATION_UNITS.iter().map(|(u, _)| *u).collect();
    format!(r"^\s*([0-9]+\s*({})\s*)+$", units.join("|"))
}

/// JSON Schema of a humantime duration string.
pub fn duration_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": duration_pattern(),
        "examples": ["5s", "500ms", "1m 30s"],
    })
}

/// Parse a humantime duration for a clap flag ("500ms", "5s", "1m").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}
