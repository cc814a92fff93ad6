//! reporter::scheduler: when a GlobalReport's reports are due. Pure: no I/O, the time comes from
//! a [`Clock`] (or is passed in), what is done already from the caller.
//!
//! Takes: `spec.schedule` (5-field cron, UTC), `spec.suspend`, the delay and catch-up window,
//! the earliest time the report may cover (its creation or first sighting). Gives: the intervals
//! due now, oldest first ([`due`]), and when the next one becomes due ([`next_due`]).
//! Must never: panic on a schedule (a bad or too frequent one is a [`ScheduleError`]), use a
//! time zone other than UTC, or give an interval twice for one `done` answer.
//!
//! Semantics (Calico's GlobalReport, `../shared/reference/calico-compliance.md` §3.1-3.2): each
//! cron tick ends one report's interval and starts the next, so an interval is two consecutive
//! ticks `[start, end)`; it is due `delay` (default 30 min) after its end; while `suspend` is true
//! nothing is due, and on resume what was missed is due; an interval whose due time is more than
//! `catch_up` (default 7 days, Calico's 168 h) in the past is skipped. A schedule with more than
//! 12 ticks in an hour is refused with Calico's reason.

use std::{fmt, sync::Mutex};

use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};
use jiff::{SignedDuration, Timestamp, civil::DateTime, tz::TimeZone};

/// Most ticks a schedule may have in one hour (Calico's `maxCRONSchedulesPerHour`).
pub const MAX_PER_HOUR: usize = 12;

/// Calico's reason for refusing a schedule with more than [`MAX_PER_HOUR`] ticks in an hour.
pub const TOO_FREQUENT: &str = "no more than 12 schedules are permitted per hour (av. /5mins)";

/// Most intervals [`due`] looks at in one call (7 days at 12 an hour is 2016).
const MAX_STEPS: usize = 100_000;

/// A schedule is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Not a 5-field cron expression.
    #[error("{text:?} is not a 5-field cron expression: {reason}")]
    Invalid {
        /// The schedule.
        text: String,
        /// Why.
        reason: String,
    },
    /// More than [`MAX_PER_HOUR`] ticks in an hour.
    #[error("{text:?} runs {per_hour} times an hour: {TOO_FREQUENT}")]
    TooFrequent {
        /// The schedule.
        text: String,
        /// Ticks in an hour.
        per_hour: usize,
    },
}

/// Where the time comes from: the system's, or a test's.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Timestamp;
}

impl<T: Clock + ?Sized> Clock for &T {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that shows what it is set to (tests).
#[derive(Debug)]
pub struct FakeClock(Mutex<Timestamp>);

impl FakeClock {
    /// A clock showing `t`.
    pub fn new(t: Timestamp) -> Self {
        Self(Mutex::new(t))
    }

    /// Shows `t` from now on.
    pub fn set(&self, t: Timestamp) {
        *self.0.lock().expect("clock lock") = t;
    }

    /// Moves on by `d`.
    pub fn advance(&self, d: SignedDuration) {
        let mut t = self.0.lock().expect("clock lock");
        *t = t.checked_add(d).expect("time in range");
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().expect("clock lock")
    }
}

/// A report's interval, `[start, end)`: two consecutive ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval {
    /// Start (a tick).
    pub start: Timestamp,
    /// End (the next tick).
    pub end: Timestamp,
}

/// RFC 3339 basic format, UTC, whole seconds: `20261127T000000Z`.
const BASIC: &str = "%Y%m%dT%H%M%SZ";

impl Interval {
    /// The archive directory's name: `20261127T000000Z_20261128T000000Z`.
    pub fn dir_name(&self) -> String {
        format!("{}_{}", self.start.strftime(BASIC), self.end.strftime(BASIC))
    }

    /// The interval a directory name ([`Interval::dir_name`]) stands for.
    pub fn from_dir_name(name: &str) -> Option<Self> {
        let (a, b) = name.split_once('_')?;
        let parse = |s: &str| DateTime::strptime(BASIC, s).ok()?.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp());
        let interval = Self { start: parse(a)?, end: parse(b)? };
        (interval.start < interval.end).then_some(interval)
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// A parsed, accepted schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    text: String,
    cron: Cron,
}

impl Schedule {
    /// Parses a 5-field cron expression (minute hour day-of-month month day-of-week, as robfig's
    /// `ParseStandard`: day of month and day of week ORed when both are restricted; `@daily` and
    /// the other nicknames too). Refuses one with more than [`MAX_PER_HOUR`] ticks in an hour.
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let invalid = |reason: String| ScheduleError::Invalid { text: text.to_owned(), reason };
        if !text.trim().starts_with('@') && text.split_whitespace().count() != 5 {
            return Err(invalid(format!("{} fields", text.split_whitespace().count())));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(text)
            .map_err(|e| invalid(e.to_string()))?;
        // Every hour a schedule fires in has the same minutes: count them.
        let per_hour = (0..60).filter(|m| cron.pattern.minute_match(*m).unwrap_or(false)).count();
        if per_hour > MAX_PER_HOUR {
            return Err(ScheduleError::TooFrequent { text: text.to_owned(), per_hour });
        }
        Ok(Self { text: text.to_owned(), cron })
    }

    /// The text it was parsed from.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first tick at or after `t` (`inclusive`) or after it; `None` when there is none
    /// (e.g. `0 0 30 2 *`).
    pub fn next(&self, t: Timestamp, inclusive: bool) -> Option<Timestamp> {
        let dt = t.to_zoned(TimeZone::UTC).datetime();
        let next = self.cron.find_next_occurrence(&dt, inclusive).ok()?;
        next.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp())
    }

    /// The last tick before `t`.
    pub fn previous(&self, t: Timestamp) -> Option<Timestamp> {
        let dt = t.to_zoned(TimeZone::UTC).datetime();
        let prev = self.cron.find_previous_occurrence(&dt, false).ok()?;
        prev.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp())
    }
}

/// The delay and the catch-up window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long after its end an interval is due (`--delay`, default 30 min).
    pub delay: SignedDuration,
    /// How far back missed intervals are still made (`--catch-up`, default 7 days): an interval
    /// due longer ago is skipped.
    pub catch_up: SignedDuration,
}

impl Default for Timing {
    fn default() -> Self {
        Self { delay: SignedDuration::from_mins(30), catch_up: SignedDuration::from_hours(7 * 24) }
    }
}

/// One GlobalReport, as the scheduler sees it.
#[derive(Clone, Debug)]
pub struct Job<'a> {
    /// The schedule.
    pub schedule: &'a Schedule,
    /// `spec.suspend`.
    pub suspended: bool,
    /// Intervals ending at or before this are never due (the resource's creation, or when the
    /// reporter first saw it): a new report does not make the past week's reports.
    pub not_before: Option<Timestamp>,
}

/// The intervals of `job` due at `now` and not `done`, oldest first: ends `e` with
/// `now − catch_up ≤ e + delay ≤ now` and `e > not_before`. Nothing while suspended.
pub fn due(job: &Job<'_>, timing: Timing, now: Timestamp, done: impl Fn(&Interval) -> bool) -> Vec<Interval> {
    if job.suspended {
        return Vec::new();
    }
    let (Ok(upper), Ok(lower)) = (now.checked_sub(timing.delay), now.checked_sub(timing.delay + timing.catch_up))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut end = job.schedule.next(lower, true);
    let mut steps = 0;
    while let Some(e) = end.filter(|e| *e <= upper) {
        steps += 1;
        if steps > MAX_STEPS {
            break;
        }
        if job.not_before.is_none_or(|nb| e > nb)
            && let Some(start) = job.schedule.previous(e)
        {
            let interval = Interval { start, end: e };
            if !done(&interval) {
                out.push(interval);
            }
        }
        end = job.schedule.next(e, false);
    }
    out
}

/// When the next interval of `job` becomes due after `now` (`None` while suspended or when the
/// schedule never fires again).
pub fn next_due(job: &Job<'_>, timing: Timing, now: Timestamp) -> Option<Timestamp> {
    if job.suspended {
        return None;
    }
    let end = job.schedule.next(now.checked_sub(timing.delay).ok()?, false)?;
    end.checked_add(timing.delay).ok()
}

/// [`due`] and [`next_due`] on an injected clock.
pub struct Scheduler<C: Clock> {
    clock: C,
    timing: Timing,
}

impl<C: Clock> Scheduler<C> {
    /// A scheduler on `clock`.
    pub fn new(clock: C, timing: Timing) -> Self {
        Self { clock, timing }
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The timing.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// [`due`] now.
    pub fn due(&self, job: &Job<'_>, done: impl Fn(&Interval) -> bool) -> Vec<Interval> {
        due(job, self.timing, self.clock.now(), done)
    }

    /// [`next_due`] now.
    pub fn next_due(&self, job: &Job<'_>) -> Option<Timestamp> {
        next_due(job, self.timing, self.clock.now())
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, collections::BTreeSet};

    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn iv(a: &str, b: &str) -> Interval {
        Interval { start: t(a), end: t(b) }
    }

    fn sched(s: &str) -> Schedule {
        Schedule::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn job(s: &Schedule) -> Job<'_> {
        Job { schedule: s, suspended: false, not_before: None }
    }

    fn nothing_done(_: &Interval) -> bool {
        false
    }

    #[test]
    fn twelve_an_hour_is_accepted_fifteen_is_refused_with_calicos_reason() {
        assert!(Schedule::parse("*/5 * * * *").is_ok());
        assert!(Schedule::parse("0,5,10,15,20,25,30,35,40,45,50,55 * * * *").is_ok());
        let e = Schedule::parse("*/4 * * * *").unwrap_err();
        assert_eq!(e, ScheduleError::TooFrequent { text: "*/4 * * * *".into(), per_hour: 15 });
        assert_eq!(
            e.to_string(),
            "\"*/4 * * * *\" runs 15 times an hour: no more than 12 schedules are permitted per hour (av. /5mins)"
        );
        assert!(matches!(Schedule::parse("* * * * *"), Err(ScheduleError::TooFrequent { per_hour: 60, .. })));
        // Only the minutes count: every minute of one hour a day is still 60 an hour.
        assert!(matches!(Schedule::parse("* 3 * * *"), Err(ScheduleError::TooFrequent { per_hour: 60, .. })));
        assert!(Schedule::parse("0-11 3 * * *").is_ok());
    }

    #[test]
    fn bad_schedules_are_errors_not_panics() {
        for bad in ["", "* * * *", "0 0 * * * *", "0 0 * * * 2026", "61 * * * *", "x y z a b", "0 25 * * *"] {
            assert!(matches!(Schedule::parse(bad), Err(ScheduleError::Invalid { .. })), "{bad:?} was accepted");
        }
        assert!(Schedule::parse("@daily").is_ok());
    }

    #[test]
    fn an_interval_is_two_consecutive_ticks_due_thirty_minutes_after_its_end() {
        let s = sched("0 * * * *");
        let j = Job { not_before: Some(t("2026-11-27T00:00:00Z")), ..job(&s) };
        let timing = Timing::default();
        // 01:29:59: the 00:00-01:00 report is not due yet.
        assert_eq!(due(&j, timing, t("2026-11-27T01:29:59Z"), nothing_done), []);
        // 01:30: it is.
        assert_eq!(
            due(&j, timing, t("2026-11-27T01:30:00Z"), nothing_done),
            [iv("2026-11-27T00:00:00Z", "2026-11-27T01:00:00Z")]
        );
        assert_eq!(next_due(&j, timing, t("2026-11-27T01:30:00Z")), Some(t("2026-11-27T02:30:00Z")));
        assert_eq!(next_due(&j, timing, t("2026-11-27T01:29:00Z")), Some(t("2026-11-27T01:30:00Z")));
        // No delay: due at the end.
        let now = Timing { delay: SignedDuration::ZERO, ..timing };
        assert_eq!(due(&j, now, t("2026-11-27T00:59:59Z"), nothing_done), []);
        assert_eq!(
            due(&j, now, t("2026-11-27T01:00:00Z"), nothing_done),
            [iv("2026-11-27T00:00:00Z", "2026-11-27T01:00:00Z")]
        );
        // What is done is left out.
        assert_eq!(due(&j, timing, t("2026-11-27T03:30:00Z"), |i| i.end == t("2026-11-27T02:00:00Z")).len(), 2);
    }

    #[test]
    fn the_31st_skips_short_months() {
        let s = sched("0 0 31 * *");
        let timing = Timing { catch_up: SignedDuration::from_hours(365 * 24), ..Timing::default() };
        let got = due(&job(&s), timing, t("2026-12-31T12:00:00Z"), nothing_done);
        let ends: Vec<String> = got.iter().map(|i| i.end.to_string()).collect();
        assert_eq!(
            ends,
            [
                "2026-01-31T00:00:00Z",
                "2026-03-31T00:00:00Z",
                "2026-05-31T00:00:00Z",
                "2026-07-31T00:00:00Z",
                "2026-08-31T00:00:00Z",
                "2026-10-31T00:00:00Z",
                "2026-12-31T00:00:00Z",
            ]
        );
        // Intervals are consecutive ticks: 31 January to 31 March.
        assert_eq!(got[1], iv("2026-01-31T00:00:00Z", "2026-03-31T00:00:00Z"));
        assert_eq!(got[0].start, t("2025-12-31T00:00:00Z"));
    }

    #[test]
    fn february_29_comes_every_four_years() {
        let s = sched("0 0 29 2 *");
        assert_eq!(s.next(t("2026-01-01T00:00:00Z"), true), Some(t("2028-02-29T00:00:00Z")));
        assert_eq!(s.previous(t("2028-02-29T00:00:00Z")), Some(t("2024-02-29T00:00:00Z")));
        let got = due(&job(&s), Timing::default(), t("2028-02-29T00:30:00Z"), nothing_done);
        assert_eq!(got, [iv("2024-02-29T00:00:00Z", "2028-02-29T00:00:00Z")]);
        // Month ends that move: the last day of February.
        let s = sched("0 0 28 2 *");
        assert_eq!(s.next(t("2028-02-28T00:00:01Z"), true), Some(t("2029-02-28T00:00:00Z")));
    }

    #[test]
    fn daylight_saving_time_does_not_exist_in_utc() {
        // Europe and the US change clocks on these days; UTC does not, so every interval is 24 h.
        let s = sched("0 2 * * *");
        let timing = Timing { catch_up: SignedDuration::from_hours(4 * 24), ..Timing::default() };
        for now in ["2026-03-31T03:00:00Z", "2026-10-27T03:00:00Z", "2026-03-10T03:00:00Z"] {
            let got = due(&job(&s), timing, t(now), nothing_done);
            assert_eq!(got.len(), 4, "{now}: {got:?}");
            for i in &got {
                assert_eq!(i.end.duration_since(i.start), SignedDuration::from_hours(24), "{i}");
                assert_eq!(i.end.to_zoned(TimeZone::UTC).hour(), 2, "{i}");
            }
        }
    }

    #[test]
    fn day_of_month_and_day_of_week_are_ored_as_in_standard_cron() {
        // The 1st, and every Monday.
        let s = sched("0 0 1 * 1");
        assert_eq!(s.next(t("2026-11-27T00:00:00Z"), true), Some(t("2026-11-30T00:00:00Z"))); // Monday
        assert_eq!(s.next(t("2026-11-30T00:00:01Z"), true), Some(t("2026-12-01T00:00:00Z"))); // the 1st
    }

    #[test]
    fn suspend_stops_reports_and_resume_catches_up() {
        let s = sched("0 * * * *");
        let suspended = Job { suspended: true, ..job(&s) };
        let now = t("2026-11-27T05:30:00Z");
        assert_eq!(due(&suspended, Timing::default(), now, nothing_done), []);
        assert_eq!(next_due(&suspended, Timing::default(), now), None);
        // Resumed: what was missed since 00:00 is due, oldest first.
        let resumed = Job { not_before: Some(t("2026-11-27T00:00:00Z")), ..job(&s) };
        let got = due(&resumed, Timing::default(), now, nothing_done);
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], iv("2026-11-27T00:00:00Z", "2026-11-27T01:00:00Z"));
        assert_eq!(got[4], iv("2026-11-27T04:00:00Z", "2026-11-27T05:00:00Z"));
        assert!(got.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn catch_up_reaches_back_seven_days_only() {
        let s = sched("0 0 * * *");
        // Down for 10 days: the last 7 daily reports are made, not the 3 before.
        let now = t("2026-11-27T00:30:00Z");
        let got = due(&job(&s), Timing::default(), now, nothing_done);
        assert_eq!(got.len(), 8, "{got:?}"); // due 20 Nov 00:30 (exactly 7 days ago) .. 27 Nov 00:30
        assert_eq!(got[0], iv("2026-11-19T00:00:00Z", "2026-11-20T00:00:00Z"));
        assert_eq!(got.last().unwrap().end, t("2026-11-27T00:00:00Z"));
        let got = due(&job(&s), Timing::default(), t("2026-11-27T00:30:01Z"), nothing_done);
        assert_eq!(got[0].end, t("2026-11-21T00:00:00Z"), "due 7 days and 1 s ago: skipped");
        // Configurable: 1 day.
        let short = Timing { catch_up: SignedDuration::from_hours(24), ..Timing::default() };
        assert_eq!(due(&job(&s), short, now, nothing_done).len(), 2);
        // At 12 an hour, a week is 2016 intervals.
        let s = sched("*/5 * * * *");
        let got = due(&job(&s), Timing::default(), now, nothing_done);
        assert_eq!(got.len(), 7 * 24 * 12 + 1);
    }

    #[test]
    fn a_new_report_does_not_make_the_past() {
        let s = sched("0 * * * *");
        let j = Job { not_before: Some(t("2026-11-27T05:10:00Z")), ..job(&s) };
        // The interval the report was created in is its first.
        assert_eq!(due(&j, Timing::default(), t("2026-11-27T06:29:00Z"), nothing_done), []);
        assert_eq!(
            due(&j, Timing::default(), t("2026-11-27T06:30:00Z"), nothing_done),
            [iv("2026-11-27T05:00:00Z", "2026-11-27T06:00:00Z")]
        );
    }

    #[test]
    fn done_intervals_are_not_due_again_across_a_restart() {
        let s = sched("*/15 * * * *");
        let clock = FakeClock::new(t("2026-11-27T00:00:00Z"));
        let done = RefCell::new(BTreeSet::new());
        let mut made = Vec::new();
        let j = Job { not_before: Some(t("2026-11-27T00:00:00Z")), ..job(&s) };
        // Runs every minute for 2 hours, with a "restart" (a new scheduler, the same record).
        for _ in 0..120 {
            let scheduler = Scheduler::new(&clock, Timing::default());
            for i in scheduler.due(&j, |i| done.borrow().contains(i)) {
                done.borrow_mut().insert(i);
                made.push(i);
            }
            clock.advance(SignedDuration::from_mins(1));
        }
        // Last poll 01:59, minus 30 min: intervals ending 00:15 .. 01:15 (5), each once.
        assert_eq!(made.len(), 5, "{made:?}");
        assert_eq!(made.iter().collect::<BTreeSet<_>>().len(), 5);
        assert_eq!(made[0], iv("2026-11-27T00:00:00Z", "2026-11-27T00:15:00Z"));
    }

    #[test]
    fn a_schedule_that_never_fires_is_never_due() {
        let s = sched("0 0 30 2 *");
        assert_eq!(due(&job(&s), Timing::default(), t("2026-11-27T00:00:00Z"), nothing_done), []);
        assert_eq!(next_due(&job(&s), Timing::default(), t("2026-11-27T00:00:00Z")), None);
    }

    #[test]
    fn archive_names_are_rfc3339_basic_and_read_back() {
        let i = iv("2026-11-27T00:00:00Z", "2026-11-28T00:00:00Z");
        assert_eq!(i.dir_name(), "20261127T000000Z_20261128T000000Z");
        assert_eq!(Interval::from_dir_name(&i.dir_name()), Some(i));
        for bad in ["", "x_y", "20261127T000000Z", "20261128T000000Z_20261127T000000Z", ".tmp-20261127T000000Z_x"] {
            assert_eq!(Interval::from_dir_name(bad), None, "{bad}");
        }
    }
}
