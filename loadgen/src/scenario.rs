//! Scenarios as phases of numbered items. An item knows its request, its
//! intended send time (open loop) and how to check the answer. Pure: no
//! I/O, no clock; the runner asks `item(k)` and `due_ms(k)`.

use std::time::Duration;

/// Operations reported separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Register,
    Beat,
    List,
    Deregister,
    /// Time from a write on the first target until every other target
    /// lists it.
    Converge,
    /// gRPC `push`: time from a write until one subscriber's push.
    Push,
    /// gRPC `push`: time from a write until the last subscriber's push.
    PushAll,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Register => "register",
            OpKind::Beat => "beat",
            OpKind::List => "list",
            OpKind::Deregister => "deregister",
            OpKind::Converge => "converge",
            OpKind::Push => "push",
            OpKind::PushAll => "push_all",
        }
    }
}

/// What a correct answer looks like.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// 200 with the body `ok`.
    Ok,
    /// 200 with a beat JSON whose `code` is 10200.
    Beat,
    /// 200 with a list JSON holding exactly this many hosts.
    Hosts(usize),
    /// 200 with a list JSON holding at least this many hosts.
    HostsAtLeast(usize),
}

/// One request of a phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub op: OpKind,
    pub method: &'static str,
    pub path: String,
    pub expect: Expect,
}

/// Checks an answer; `Err(kind)` names the error as reports count it.
pub fn check(expect: &Expect, status: u16, body: &[u8]) -> Result<(), String> {
    if status != 200 {
        return Err(format!("http_{status}"));
    }
    match expect {
        Expect::Ok => {
            if body == b"ok" {
                Ok(())
            } else {
                Err("bad_body".into())
            }
        }
        Expect::Beat => {
            let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| "bad_json")?;
            match v.get("code").and_then(|c| c.as_i64()) {
                Some(10200) => Ok(()),
                Some(code) => Err(format!("beat_code_{code}")),
                None => Err("bad_json".into()),
            }
        }
        Expect::Hosts(n) | Expect::HostsAtLeast(n) => {
            // Count the hosts without building them: a big service's list
            // is megabytes, and the generator must not be the bottleneck.
            #[derive(serde::Deserialize)]
            struct HostCount {
                hosts: Vec<serde::de::IgnoredAny>,
            }
            let got = serde_json::from_slice::<HostCount>(body)
                .map_err(|_| "bad_json")?
                .hosts
                .len();
            let good = match expect {
                Expect::Hosts(_) => got == *n,
                _ => got >= *n,
            };
            if good {
                Ok(())
            } else {
                Err("wrong_hosts".into())
            }
        }
    }
}

/// The knobs of a run.
#[derive(Debug, Clone)]
pub struct Params {
    pub instances: usize,
    pub services: usize,
    pub duration: Duration,
    /// Open-loop rate (requests/s) for rate-driven phases; None: closed loop.
    pub rate: Option<f64>,
    /// Distinguishes the names of one run from another's.
    pub seed: u64,
    /// Beat period of the `beat` and `storm` scenarios.
    pub beat_period: Duration,
    /// Registers and deregisters persistent instances.
    pub persistent: bool,
}

/// Instance `i`'s service and address: service `i % S`, a distinct IP.
pub fn instance(p: &Params, i: usize) -> (String, String, u16) {
    let svc = format!("lg{}-svc-{}", p.seed, i % p.services.max(1));
    let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    let port = 8080 + (i >> 24) as u16;
    (svc, ip, port)
}

/// Instances registered in service `s` when `n` are spread over `S`.
pub fn instances_in_service(p: &Params, s: usize) -> usize {
    let services = p.services.max(1);
    p.instances / services + usize::from(s < p.instances % services)
}

/// The query suffix of a persistent instance's writes.
fn persistence(p: &Params) -> &'static str {
    if p.persistent {
        "&ephemeral=false"
    } else {
        ""
    }
}

pub fn register(p: &Params, i: usize) -> Item {
    let (svc, ip, port) = instance(p, i);
    Item {
        op: OpKind::Register,
        method: "POST",
        path: format!(
            "/nacos/v1/ns/instance?serviceName={svc}&ip={ip}&port={port}{}",
            persistence(p)
        ),
        expect: Expect::Ok,
    }
}

pub fn deregister(p: &Params, i: usize) -> Item {
    let (svc, ip, port) = instance(p, i);
    Item {
        op: OpKind::Deregister,
        method: "DELETE",
        path: format!(
            "/nacos/v1/ns/instance?serviceName={svc}&ip={ip}&port={port}{}",
            persistence(p)
        ),
        expect: Expect::Ok,
    }
}

/// A beat with the beat JSON, as the Java and Python SDKs send it (an
/// unknown instance is registered from it, so the answer is always 10200).
pub fn beat(p: &Params, i: usize) -> Item {
    let (svc, ip, port) = instance(p, i);
    let beat = format!(
        "%7B%22ip%22%3A%22{ip}%22%2C%22port%22%3A{port}%2C%22cluster%22%3A%22DEFAULT%22%2C%22serviceName%22%3A%22DEFAULT_GROUP%40%40{svc}%22%7D"
    );
    Item {
        op: OpKind::Beat,
        method: "PUT",
        path: format!("/nacos/v1/ns/instance/beat?serviceName={svc}&beat={beat}"),
        expect: Expect::Beat,
    }
}

pub fn list(p: &Params, s: usize, expect: Expect) -> Item {
    Item {
        op: OpKind::List,
        method: "GET",
        path: format!(
            "/nacos/v1/ns/instance/list?serviceName=lg{}-svc-{s}",
            p.seed
        ),
        expect,
    }
}

/// How items are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as the connections allow.
    Closed,
    /// Item k is due at k / rate seconds.
    Rate(f64),
    /// `n` items per `period`, spread evenly (a fleet beating).
    Periodic { n: usize, period: Duration },
}

impl Pace {
    /// When item `k` is due, in ms from the phase start (None: now).
    pub fn due_ms(&self, k: usize) -> Option<f64> {
        match *self {
            Pace::Closed => None,
            Pace::Rate(r) => Some(k as f64 * 1000.0 / r),
            Pace::Periodic { n, period } => {
                let n = n.max(1);
                let period_ms = period.as_secs_f64() * 1000.0;
                Some((k / n) as f64 * period_ms + (k % n) as f64 * period_ms / n as f64)
            }
        }
    }
}

/// What one phase's item `k` is.
#[derive(Debug, Clone)]
pub enum Work {
    Register,
    Deregister,
    Beat,
    /// List service `k % S`, expecting exactly its registered instances.
    ListExact,
    /// Register instance k while beating instance k/2 and listing a
    /// service: the startup storm of a data centre.
    Storm,
    /// Register instance k on the first target, then poll the others.
    Converge,
}

/// A phase: `items` items of `work`, paced, bounded by `deadline`.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub work: Work,
    pub items: usize,
    pub pace: Pace,
    /// Stop taking new items after this long.
    pub deadline: Duration,
    /// Only the measured phases are reported.
    pub measured: bool,
}

impl Phase {
    /// The requests of item `k` (storm items issue three).
    pub fn requests(&self, p: &Params, k: usize) -> Vec<Item> {
        match self.work {
            Work::Register | Work::Converge => vec![register(p, k)],
            Work::Deregister => vec![deregister(p, k)],
            Work::Beat => vec![beat(p, k % p.instances.max(1))],
            Work::ListExact => {
                let s = k % p.services.max(1);
                vec![list(p, s, Expect::Hosts(instances_in_service(p, s)))]
            }
            Work::Storm => vec![
                register(p, k),
                beat(p, k / 2),
                list(p, k % p.services.max(1), Expect::HostsAtLeast(0)),
            ],
        }
    }
}

/// Phases of a scenario. Every phase is bounded in count and time.
/// The scenarios whose measured phase runs for `--duration`.
pub const TIMED: [&str; 3] = ["beat", "query", "storm"];

/// Every scenario `phases` knows.
pub const SCENARIOS: [&str; 5] = ["burst", "beat", "query", "storm", "converge"];

pub fn phases(scenario: &str, p: &Params, time_cap: Duration) -> Result<Vec<Phase>, String> {
    let n = p.instances;
    let closed_or_rate = p.rate.map(Pace::Rate).unwrap_or(Pace::Closed);
    let setup = |work, items, name| Phase {
        name,
        work,
        items,
        pace: Pace::Closed,
        deadline: time_cap,
        measured: false,
    };
    let measured = |work, items, pace, deadline, name| Phase {
        name,
        work,
        items,
        pace,
        deadline,
        measured: true,
    };
    let beats = (p.duration.as_secs_f64() / p.beat_period.as_secs_f64()).ceil() as usize * n;
    Ok(match scenario {
        "burst" => vec![
            measured(Work::Register, n, closed_or_rate, time_cap, "register"),
            measured(Work::ListExact, p.services, Pace::Closed, time_cap, "list"),
            measured(Work::Deregister, n, closed_or_rate, time_cap, "deregister"),
        ],
        "beat" => vec![
            setup(Work::Register, n, "setup"),
            measured(
                Work::Beat,
                beats,
                Pace::Periodic {
                    n,
                    period: p.beat_period,
                },
                p.duration.min(time_cap),
                "beat",
            ),
            setup(Work::Deregister, n, "cleanup"),
        ],
        "query" => vec![
            setup(Work::Register, n, "setup"),
            measured(
                Work::ListExact,
                usize::MAX,
                closed_or_rate,
                p.duration.min(time_cap),
                "list",
            ),
            setup(Work::Deregister, n, "cleanup"),
        ],
        "storm" => vec![
            measured(
                Work::Storm,
                n,
                closed_or_rate,
                p.duration.min(time_cap),
                "storm",
            ),
            setup(Work::Deregister, n, "cleanup"),
        ],
        "converge" => vec![
            measured(Work::Converge, n, closed_or_rate, time_cap, "converge"),
            setup(Work::Deregister, n, "cleanup"),
        ],
        other => {
            return Err(format!(
                "unknown scenario {other:?}; the scenarios are {}",
                SCENARIOS.join(", ")
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            instances: 10,
            services: 3,
            duration: Duration::from_secs(10),
            rate: None,
            seed: 7,
            beat_period: Duration::from_secs(5),
            persistent: false,
        }
    }

    #[test]
    fn persistent_writes_say_so() {
        let mut p = params();
        assert!(!register(&p, 1).path.contains("ephemeral"));
        p.persistent = true;
        assert!(register(&p, 1).path.ends_with("&ephemeral=false"));
        assert!(deregister(&p, 1).path.ends_with("&ephemeral=false"));
    }

    #[test]
    fn instances_are_distinct_and_spread() {
        let p = params();
        let all: std::collections::HashSet<_> = (0..10).map(|i| instance(&p, i)).collect();
        assert_eq!(all.len(), 10);
        let per: Vec<usize> = (0..3).map(|s| instances_in_service(&p, s)).collect();
        assert_eq!(per, vec![4, 3, 3]);
        assert_eq!(per.iter().sum::<usize>(), 10);
    }

    #[test]
    fn pacing() {
        assert_eq!(Pace::Closed.due_ms(5), None);
        assert_eq!(Pace::Rate(100.0).due_ms(50), Some(500.0));
        let beat = Pace::Periodic {
            n: 4,
            period: Duration::from_secs(5),
        };
        assert_eq!(beat.due_ms(0), Some(0.0));
        assert_eq!(beat.due_ms(2), Some(2500.0));
        assert_eq!(beat.due_ms(4), Some(5000.0), "second round");
    }

    #[test]
    fn checks() {
        assert!(check(&Expect::Ok, 200, b"ok").is_ok());
        assert_eq!(check(&Expect::Ok, 500, b"ok"), Err("http_500".into()));
        assert_eq!(check(&Expect::Ok, 200, b"nope"), Err("bad_body".into()));
        assert!(check(&Expect::Beat, 200, br#"{"code":10200}"#).is_ok());
        assert_eq!(
            check(&Expect::Beat, 200, br#"{"code":20404}"#),
            Err("beat_code_20404".into())
        );
        assert!(check(&Expect::Hosts(1), 200, br#"{"hosts":[{}]}"#).is_ok());
        assert_eq!(
            check(&Expect::Hosts(2), 200, br#"{"hosts":[{}]}"#),
            Err("wrong_hosts".into())
        );
        assert_eq!(
            check(&Expect::Hosts(2), 200, b"<html>"),
            Err("bad_json".into())
        );
    }

    #[test]
    fn every_scenario_is_bounded() {
        let p = params();
        for s in ["burst", "beat", "query", "storm", "converge"] {
            for phase in phases(s, &p, Duration::from_secs(60)).unwrap() {
                assert!(
                    phase.deadline <= Duration::from_secs(60),
                    "{s}/{}",
                    phase.name
                );
            }
        }
        assert!(phases("nope", &p, Duration::from_secs(1)).is_err());
        let beat = &phases("beat", &p, Duration::from_secs(60)).unwrap()[1];
        assert_eq!(beat.items, 20, "10 instances x 2 periods in 10 s");
    }
}
