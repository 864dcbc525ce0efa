//! Cron schedules as CronJobs write them: five fields (minute hour day-of-month month
//! day-of-week) of `*`, numbers, ranges, steps and lists, month and weekday names, or a macro
//! (`@hourly`, `@daily`, …). Parsing is here (the validator uses it); finding the next time in
//! a time zone is the controller's.
//!
//! As in Vixie cron and Kubernetes: when both day-of-month and day-of-week are restricted, a
//! day matching *either* fires; day-of-week 7 is Sunday like 0.

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub minutes: u64,
    pub hours: u32,
    /// Bits 1..=31.
    pub days_of_month: u32,
    /// Bits 1..=12.
    pub months: u16,
    /// Bits 0..=6, Sunday = 0.
    pub days_of_week: u8,
    /// Whether day-of-month or day-of-week was `*` (or a `*/N` step), which decides how they
    /// combine.
    pub dom_star: bool,
    pub dow_star: bool,
}

impl Schedule {
    /// Parses a schedule; the error says what is wrong in which field.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let s = text.trim();
        if s.is_empty() {
            return Err("a schedule is required".into());
        }
        let expanded = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            m if m.starts_with('@') => return Err(format!("unrecognized descriptor: {m}")),
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!("expected exactly 5 fields, found {}: {s}", fields.len()));
        }
        let minutes = field(fields[0], 0, 59, &[])?;
        let hours = field(fields[1], 0, 23, &[])?;
        let dom = field(fields[2], 1, 31, &[])?;
        let months = field(fields[3], 1, 12, &MONTHS)?;
        let mut dow = field(fields[4], 0, 7, &DAYS)?;
        if dow & (1 << 7) != 0 {
            dow = (dow | 1) & !(1 << 7);
        }
        let star = |f: &str| f.starts_with('*');
        Ok(Schedule {
            minutes,
            // Each field's bits stay below its maximum, so the narrowing never truncates.
            hours: u32::try_from(hours).unwrap_or(0),
            days_of_month: u32::try_from(dom).unwrap_or(0),
            months: u16::try_from(months).unwrap_or(0),
            days_of_week: u8::try_from(dow).unwrap_or(0),
            dom_star: star(fields[2]),
            dow_star: star(fields[4]),
        })
    }

    pub fn minute(&self, m: u32) -> bool {
        m < 64 && self.minutes & (1 << m) != 0
    }

    pub fn hour(&self, h: u32) -> bool {
        h < 32 && self.hours & (1 << h) != 0
    }

    pub fn month(&self, m: u32) -> bool {
        m < 16 && self.months & (1 << m) != 0
    }

    /// Whether a day fires: `dom` 1..=31, `dow` 0..=6 (Sunday 0).
    pub fn day(&self, dom: u32, dow: u32) -> bool {
        let d = dom < 32 && self.days_of_month & (1 << dom) != 0;
        let w = dow < 8 && self.days_of_week & (1 << dow) != 0;
        if self.dom_star || self.dow_star { d && w } else { d || w }
    }
}

const MONTHS: [&str; 12] =
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One field → a bit set of its values.
fn field(f: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64, String> {
    let num = |t: &str| -> Result<u32, String> {
        let lower = t.to_ascii_lowercase();
        let v = match names.iter().position(|n| *n == lower) {
            // Months are named from 1, days from 0.
            Some(p) => u32::try_from(p).unwrap_or(u32::MAX) + lo,
            None => t.parse::<u32>().map_err(|_| format!("failed to parse int from {t}"))?,
        };
        if v > hi {
            Err(format!("end of range ({v}) above maximum ({hi}): {t}"))
        } else if v < lo {
            Err(format!("beginning of range ({v}) below minimum ({lo}): {t}"))
        } else {
            Ok(v)
        }
    };
    let mut bits = 0u64;
    for part in f.split(',') {
        let (range, step) = part.split_once('/').map_or((part, None), |(r, s)| (r, Some(s)));
        let step = match step {
            Some(st) => match st.parse::<u32>() {
                Ok(v) if v > 0 => v,
                _ => return Err(format!("invalid step {st:?} in {f}")),
            },
            None => 1,
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else {
            match range.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(format!("beginning of range ({a}) beyond end of range ({b}): {range}"));
                    }
                    (a, b)
                }
                // `5/15` means from 5 to the end in steps of 15.
                None if step > 1 => (num(range)?, hi),
                None => {
                    let v = num(range)?;
                    (v, v)
                }
            }
        };
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_macros() {
        let s = Schedule::parse("*/15 9-17 * * mon-fri").unwrap();
        assert!(s.minute(0) && s.minute(45) && !s.minute(5));
        assert!(s.hour(9) && s.hour(17) && !s.hour(18));
        assert!(s.day(3, 1) && !s.day(3, 0) && !s.day(3, 6));
        let d = Schedule::parse("@daily").unwrap();
        assert!(d.minute(0) && d.hour(0) && !d.hour(1) && d.day(17, 4));
        // Both restricted: either matches (the 1st, or any Friday).
        let e = Schedule::parse("0 0 1 * 5").unwrap();
        assert!(e.day(1, 2) && e.day(9, 5) && !e.day(9, 4));
        // 7 is Sunday.
        assert!(Schedule::parse("0 0 * * 7").unwrap().day(5, 0));
        assert!(Schedule::parse("0 0 * jan,dec *").unwrap().month(12));
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(Schedule::parse("61 * * * *").unwrap_err(), "end of range (61) above maximum (59): 61");
        assert_eq!(Schedule::parse("* * *").unwrap_err(), "expected exactly 5 fields, found 3: * * *");
        assert_eq!(Schedule::parse("0 0 0 * *").unwrap_err(), "beginning of range (0) below minimum (1): 0");
        assert!(Schedule::parse("*/0 * * * *").unwrap_err().contains("invalid step"));
        assert!(Schedule::parse("@often").unwrap_err().contains("unrecognized descriptor"));
    }
}
