//! Time as the s6 suite puts it on the wire: TAI64N labels ("tain").
//!
//! A [`Tain`] is a TAI64 label (2^62 + seconds of TAI since 1970-01-01 TAI)
//! and nanoseconds. It packs into 12 bytes (u64 BE then u32 BE), and its
//! text form is `@` followed by the 24 lower-case hex digits of those bytes.
//! The system clock is UTC; converting it to TAI adds 10 s plus the leap
//! seconds, from the same table the reference uses.
//!
//! Nothing here fails: arithmetic saturates, and only the conversions that
//! can have no answer ([`Tain::to_unix`], [`Tain::from_text`]) return an
//! `Option`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use fdholder::tain::{self, Tain};
//!
//! // An expiry one hour from now, as a store request carries it.
//! let now = Tain::now();
//! let limit = now + Duration::from_secs(3600);
//! assert!(limit.is_finite_from(now));
//! assert_eq!(limit.duration_since(now), Duration::from_secs(3600));
//!
//! // On the wire: 12 bytes; in S6_FDLIMIT_i: `@` and 24 hex digits.
//! let bytes: [u8; tain::PACK] = limit.pack();
//! assert_eq!(Tain::unpack(&bytes), limit);
//! assert_eq!(Tain::from_text(limit.to_text().as_bytes()), Some(limit));
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2^62: the TAI64 label of 1970-01-01 00:00:00 TAI.
///
/// # Example
///
/// ```
/// use fdholder::tain::{TAI_MAGIC, Tain};
/// // 1970-01-01 00:00:00 UTC was 00:00:10 TAI.
/// assert_eq!(Tain::from_unix(0, 0).sec, TAI_MAGIC + 10);
/// ```
pub const TAI_MAGIC: u64 = 1 << 62;

/// What clients add to "now" to mean "no expiry" (2^61 s, as the reference).
///
/// # Example
///
/// ```
/// use fdholder::tain::{INFINITE_RELATIVE, Tain};
/// let now = Tain::now();
/// assert_eq!(Tain::infinite_from(now), now.add_secs(INFINITE_RELATIVE));
/// ```
pub const INFINITE_RELATIVE: u64 = 1 << 61;

/// Limits further than now + 2^60 s are treated as infinite by the tools.
///
/// # Example
///
/// ```
/// use fdholder::tain::{HALF_INFINITE_RELATIVE, Tain};
/// let now = Tain::now();
/// assert!(now.add_secs(HALF_INFINITE_RELATIVE - 1).is_finite_from(now));
/// assert!(!now.add_secs(HALF_INFINITE_RELATIVE).is_finite_from(now));
/// ```
pub const HALF_INFINITE_RELATIVE: u64 = 1 << 60;

/// Size of a packed tain on the wire.
///
/// # Example
///
/// ```
/// use fdholder::tain::{PACK, Tain};
/// assert_eq!(Tain::now().pack().len(), PACK);
/// assert_eq!(PACK, 12);
/// ```
pub const PACK: usize = 12;

/// UTC seconds (Unix time) at which each leap second took effect.
const LEAP_SECONDS: [u64; 27] = [
    78796800, 94694400, 126230400, 157766400, 189302400, 220924800, 252460800, 283996800,
    315532800, 362793600, 394329600, 425865600, 489024000, 567993600, 631152000, 662688000,
    709948800, 741484800, 773020800, 820454400, 867715200, 915148800, 1136073600, 1230768000,
    1341100800, 1435708800, 1483228800,
];

/// A TAI64N timestamp: a TAI64 label and nanoseconds (0..1e9).
///
/// Ordered by time (label, then nanoseconds). The default value, label 0,
/// is long before 1970: a limit that has always passed.
///
/// # Example
///
/// ```
/// use fdholder::tain::{TAI_MAGIC, Tain};
/// let t = Tain { sec: TAI_MAGIC + 10, nano: 500_000_000 };
/// assert_eq!(t, Tain::from_unix(0, 500_000_000));
/// assert!(Tain::default() < t);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tain {
    /// TAI64 label: 2^62 + TAI seconds since the epoch.
    pub sec: u64,
    /// Nanoseconds, below 1,000,000,000.
    pub nano: u32,
}

fn leaps(utc: u64) -> u64 {
    LEAP_SECONDS.partition_point(|&l| l <= utc) as u64
}

impl Tain {
    /// Converts Unix time (UTC seconds and nanoseconds) to TAI64N.
    ///
    /// # Example
    ///
    /// ```
    /// use fdholder::tain::{TAI_MAGIC, Tain};
    /// // From 2017-01-01 on, TAI is UTC + 37 s.
    /// let t = Tain::from_unix(1_483_228_800, 0);
    /// assert_eq!(t.sec, TAI_MAGIC + 1_483_228_800 + 37);
    /// assert_eq!(t.to_unix(), Some(1_483_228_800));
    /// ```
    pub fn from_unix(secs: u64, nano: u32) -> Tain {
        Tain {
            sec: TAI_MAGIC + secs + 10 + leaps(secs),
            nano,
        }
    }

    /// Converts a system time to TAI64N (times before 1970 clamp to 1970).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, SystemTime, UNIX_EPOCH};
    /// use fdholder::tain::Tain;
    /// let t = UNIX_EPOCH + Duration::new(1_483_228_800, 7);
    /// assert_eq!(Tain::from_system_time(t), Tain::from_unix(1_483_228_800, 7));
    /// let before = UNIX_EPOCH - Duration::from_secs(1);
    /// assert_eq!(Tain::from_system_time(before), Tain::from_unix(0, 0));
    /// ```
    pub fn from_system_time(t: SystemTime) -> Tain {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Tain::from_unix(d.as_secs(), d.subsec_nanos())
    }

    /// The current wall-clock time in TAI64N (`CLOCK_REALTIME`; a clock set
    /// before 1970 reads as 1970).
    ///
    /// # Example
    ///
    /// ```
    /// use fdholder::tain::Tain;
    /// // Later than 2001-09-09, whatever this machine's clock says beyond.
    /// assert!(Tain::now() > Tain::from_unix(1_000_000_000, 0));
    /// ```
    pub fn now() -> Tain {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
        Tain::from_unix(ts.tv_sec.max(0) as u64, ts.tv_nsec as u32)
    }

    /// Converts back to Unix seconds (UTC); the nanoseconds are dropped.
    ///
    /// `None` for a label before 1970-01-01 00:00:00 UTC (below
    /// [`TAI_MAGIC`] + 10), which has no Unix time.
    ///
    /// # Example
    ///
    /// ```
    /// use fdholder::tain::{TAI_MAGIC, Tain};
    /// assert_eq!(Tain::from_unix(1_795_300_839, 999).to_unix(), Some(1_795_300_839));
    /// assert_eq!(Tain { sec: TAI_MAGIC, nano: 0 }.to_unix(), None);
    /// ```
    pub fn to_unix(self) -> Option<u64> {
        let tai = self.sec.checked_sub(TAI_MAGIC + 10)?;
        // The UTC time u satisfies u + leaps(u) == tai; leaps grows slowly.
        let mut u = tai.saturating_sub(leaps(tai));
        while u + leaps(u) < tai {
            u += 1;
        }
        Some(u)
    }

    /// `self + d`, saturating.
    fn plus(self, d: Duration) -> Tain {
        // u64 arithmetic: a tain from the wire may carry nanoseconds up to
        // u32::MAX, which this normalises instead of overflowing.
        let nano = u64::from(self.nano) + u64::from(d.subsec_nanos());
        let sec = self
            .sec
            .saturating_add(d.as_secs())
            .saturating_add(nano / 1_000_000_000);
        Tain {
            sec,
            nano: (nano % 1_000_000_000) as u32,
        }
    }

    /// `self + secs` seconds, saturating at `u64::MAX`.
    ///
    /// # Example
    ///
    /// ```
    /// use fdholder::tain::Tain;
    /// let t = Tain::from_unix(0, 3);
    /// assert_eq!(t.add_secs(5), Tain::from_unix(5, 3));
    /// assert_eq!(t.add_secs(u64::MAX).sec, u64::MAX);
    /// ```
    pub fn add_secs(self, secs: u64) -> Tain {
        Tain {
            sec: self.sec.saturating_add(secs),
            nano: self.nano,
        }
    }

    /// The time left from `now` until `self`, or zero if it has passed.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use fdholder::tain::Tain;
    /// let now = Tain::from_unix(100, 900_000_000);
    /// let limit = Tain::from_unix(102, 100_000_000);
    /// assert_eq!(limit.duration_since(now), Duration::from_millis(1200));
    /// assert_eq!(now.duration_since(limit), Duration::ZERO);
    /// ```
    pub fn duration_since(self, now: Tain) -> Duration {
        if self <= now {
            return Duration::ZERO;
        }
        let (mut sec, nano) = if self.nano >= now.nano {
            (self.sec - now.sec, self.nano - now.nano)
        } else {
            (self.sec - now.sec - 1, self.nano + 1_000_000_000 - now.nano)
        };
        sec = sec.min(u64::MAX / 2);
        Duration::new(sec, nano)
    }

    /// The limit a client sends for "no expiry": `now + 2^61 s`
    /// ([`INFINITE_RELATIVE`]), as the reference's clients do.
    ///
    /// # Example
    ///
    /// ```
    /// use fdholder::tain::Tain;
    /// let now = Tain::now();
    /// assert!(!Tain::infinite_from(now).is_finite_from(now));
    /// ```
    pub fn infinite_from(now: Tain) -> Tain {
        now.add_secs(INFINITE_RELATIVE)
    }

    /// Whether this limit is finite as the tools see it: before
    /// `now + 2^60 s` ([`HALF_INFINITE_RELATIVE`]). `s6-fdholder-getdump`
    /// passes a finite limit on in `S6_FDLIMIT_i`, an infinite one not.
    ///
    /// # Example
    ///
    /// ```
    /// use fdholder::tain::Tain;
    /// let now = Tain::now();
    /// assert!(now.add_secs(3600).is_finite_from(now));
    /// assert!(!Tain::infinite_from(now).is_finite_from(now));
    /// ```
    pub fn is_finite_from(self, now: Tain) -> bool {
        self < now.add_secs(HALF_INFINITE_RELATIVE)
    }

    /// Packs into the 12 wire bytes: the label (u64 BE), then the
    /// nanoseconds (u32 BE).
    ///
    /// # Example
    ///
    /// ```
    /// use fdholder::tain::Tain;
    /// let t = Tain { sec: 0x4000_0000_6b02_1c00, nano: 0x2015_004a };
    /// assert_eq!(t.pack(), [0x40, 0, 0, 0, 0x6b, 0x02, 0x1c, 0, 0x20, 0x15, 0, 0x4a]);
    /// ```
    pub fn pack(self) -> [u8; PACK] {
        let mut b = [0u8; PACK];
        b[..8].copy_from_slice(&self.sec.to_be_bytes());
        b[8..].copy_from_slice(&self.nano.to_be_bytes());
        b
    }

    /// Unpacks 12 wire bytes. Nanoseconds are taken as sent (the reference
    /// does not check them either); comparisons stay total, and adding a
    /// [`Duration`] normalises them.
    ///
    /// # Example
    ///
    /// ```
    /// use fdholder::tain::Tain;
    /// let t = Tain::unpack(&[0x40, 0, 0, 0, 0x6b, 0x02, 0x1c, 0, 0x20, 0x15, 0, 0x4a]);
    /// assert_eq!(t, Tain { sec: 0x4000_0000_6b02_1c00, nano: 0x2015_004a });
    /// assert_eq!(Tain::unpack(&t.pack()), t);
    /// ```
    pub fn unpack(b: &[u8; PACK]) -> Tain {
        let mut s = [0u8; 8];
        s.copy_from_slice(&b[..8]);
        let mut n = [0u8; 4];
        n.copy_from_slice(&b[8..]);
        Tain {
            sec: u64::from_be_bytes(s),
            nano: u32::from_be_bytes(n),
        }
    }

    /// The text form: `@` and 24 lower-case hex digits (the packed bytes),
    /// as in `S6_FDLIMIT_i`.
    ///
    /// # Example
    ///
    /// ```
    /// use fdholder::tain::Tain;
    /// let t = Tain { sec: 0x4000_0000_6b02_1c00, nano: 0x2015_004a };
    /// assert_eq!(t.to_text(), "@400000006b021c002015004a");
    /// ```
    pub fn to_text(self) -> String {
        format!("@{:016x}{:08x}", self.sec, self.nano)
    }

    /// Parses the text form ([`Tain::to_text`]); upper-case digits are
    /// accepted.
    ///
    /// `None` unless `s` is exactly `@` and 24 hex digits: no `@`, fewer or
    /// more digits, or a character that is not a hex digit.
    ///
    /// # Example
    ///
    /// ```
    /// use fdholder::tain::Tain;
    /// let t = Tain { sec: 0x4000_0000_6b02_1c00, nano: 0x2015_004a };
    /// assert_eq!(Tain::from_text(b"@400000006b021c002015004a"), Some(t));
    /// assert_eq!(Tain::from_text(b"@400000006B021C002015004A"), Some(t));
    /// assert_eq!(Tain::from_text(b"400000006b021c002015004a"), None);
    /// assert_eq!(Tain::from_text(b"@400000006b021c002015004"), None);
    /// ```
    pub fn from_text(s: &[u8]) -> Option<Tain> {
        let hex = s.strip_prefix(b"@")?;
        if hex.len() != 24 || !hex.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let hex = std::str::from_utf8(hex).ok()?;
        let sec = u64::from_str_radix(&hex[..16], 16).ok()?;
        let nano = u32::from_str_radix(&hex[16..], 16).ok()?;
        Some(Tain { sec, nano })
    }
}

/// `tain + duration`, saturating; the result's nanoseconds are normalised
/// (below 1,000,000,000), even for a tain from the wire that was not.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use fdholder::tain::Tain;
/// let t = Tain::from_unix(10, 999_999_999) + Duration::from_nanos(2);
/// assert_eq!(t, Tain::from_unix(11, 1));
/// ```
impl std::ops::Add<Duration> for Tain {
    type Output = Tain;

    /// `self + d`, saturating.
    fn add(self, d: Duration) -> Tain {
        self.plus(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip() {
        let t = Tain {
            sec: 0x4000_0000_6b02_1c00,
            nano: 0x2015_004a,
        };
        assert_eq!(Tain::unpack(&t.pack()), t);
        assert_eq!(t.to_text(), "@400000006b021c002015004a");
        assert_eq!(Tain::from_text(b"@400000006b021c002015004a"), Some(t));
        assert_eq!(Tain::from_text(b"400000006b021c002015004a"), None);
        assert_eq!(Tain::from_text(b"@400000006b021c002015004"), None);
        assert_eq!(Tain::from_text(b"@400000006b021c002015004g"), None);
    }

    #[test]
    fn leap_seconds() {
        // Before any leap second: TAI = UTC + 10.
        assert_eq!(Tain::from_unix(0, 0).sec, TAI_MAGIC + 10);
        // Since 2017-01-01: TAI = UTC + 37.
        assert_eq!(
            Tain::from_unix(1483228800, 0).sec,
            TAI_MAGIC + 1483228800 + 37
        );
        assert_eq!(
            Tain::from_unix(1483228799, 0).sec,
            TAI_MAGIC + 1483228799 + 36
        );
        // Observed from the reference: S6_FDLIMIT for a -T 5000 store at
        // Unix time 1795300834 was @400000006b021e0c...
        assert_eq!(
            Tain::from_unix(1795300834 + 5, 0).sec,
            0x4000_0000_6b02_1e0c
        );
        // Each leap second counts from its own instant on, not a second early.
        for (i, &l) in LEAP_SECONDS.iter().enumerate() {
            assert_eq!((leaps(l - 1), leaps(l)), (i as u64, i as u64 + 1));
        }
        for u in [0, 78796799, 78796800, 1483228800, 1795300834] {
            assert_eq!(Tain::from_unix(u, 0).to_unix(), Some(u));
        }
    }

    #[test]
    fn arithmetic() {
        let t = Tain {
            sec: TAI_MAGIC,
            nano: 999_999_999,
        };
        assert_eq!(
            (t + Duration::from_nanos(1)),
            Tain {
                sec: TAI_MAGIC + 1,
                nano: 0
            }
        );
        assert_eq!(
            (t + Duration::from_nanos(2)).duration_since(t),
            Duration::from_nanos(2)
        );
        assert_eq!(t.duration_since(t.add_secs(1)), Duration::ZERO);
        // Unnormalised nanoseconds, as a hostile peer may send them.
        let odd = Tain {
            sec: TAI_MAGIC,
            nano: u32::MAX,
        };
        assert_eq!(
            odd + Duration::from_nanos(1),
            Tain {
                sec: TAI_MAGIC + 4,
                nano: 294_967_296
            }
        );
        let now = Tain::now();
        assert!(!Tain::infinite_from(now).is_finite_from(now));
        assert!(now.add_secs(1000).is_finite_from(now));
    }
}
