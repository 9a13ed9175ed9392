//! Client authentication and permissions (`--auth`), as Nacos clients
//! expect them: login for a JWT, then a token (or username and password)
//! on every request, checked against the users file's roles.
//!
//! Who owns what: `Auth` is node-wide (in `Shared`): the signer, the users
//! file's current version (swapped whole on SIGHUP), the failed-login
//! limiter and the bcrypt threads. Each shard keeps its own `AuthCache` of
//! verified tokens and password checks, so that a beat with a known token
//! costs a hash-map lookup and no HMAC, and bcrypt never runs on a shard.

pub mod token;
pub mod users;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

pub use token::Signer;
pub use users::{Action, UserDb};

use crate::reply::Reply;

/// Verified tokens kept per shard; when full, expired ones go, then all.
pub const TOKEN_CACHE_ENTRIES_MAX: usize = 16_384;
/// Username/password checks kept per shard.
pub const PASSWORD_CACHE_ENTRIES_MAX: usize = 4_096;
/// A right password is trusted this long without another bcrypt, s.
pub const PASSWORD_CACHE_OK_S: u64 = 300;
/// A wrong one is refused this long without another bcrypt, s.
pub const PASSWORD_CACHE_BAD_S: u64 = 10;
/// Password checks waiting for a bcrypt thread; past it: 503.
pub const BCRYPT_QUEUE_MAX: usize = 256;
/// bcrypt threads (at most; one per two CPUs).
pub const BCRYPT_THREADS_MAX: usize = 4;
/// Failed logins (bcrypt-checked) allowed per source address per window.
pub const LOGIN_FAILURES_MAX: u32 = 10;
pub const LOGIN_FAILURE_WINDOW_S: u64 = 60;
/// Source addresses the limiter remembers; when full, old windows go.
pub const LIMITER_ADDRS_MAX: usize = 65_536;
/// The bcrypt cost `hash-password` uses (Nacos's).
pub const BCRYPT_COST: u32 = 10;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoCredentials,
    BadToken,
    Expired,
    UnknownUser,
    BadPassword,
    Forbidden,
    RateLimited,
    Busy,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::NoCredentials,
        Refusal::BadToken,
        Refusal::Expired,
        Refusal::UnknownUser,
        Refusal::BadPassword,
        Refusal::Forbidden,
        Refusal::RateLimited,
        Refusal::Busy,
    ];

    /// Label value in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::NoCredentials => "no_credentials",
            Refusal::BadToken => "bad_token",
            Refusal::Expired => "expired_token",
            Refusal::UnknownUser => "unknown_user",
            Refusal::BadPassword => "bad_password",
            Refusal::Forbidden => "forbidden",
            Refusal::RateLimited => "rate_limited",
            Refusal::Busy => "busy",
        }
    }

    /// Status and Nacos's message (a forbidden one names the resource).
    pub fn reply(self, denied: Option<(&str, &str, Action)>) -> Reply {
        match self {
            Refusal::NoCredentials => Reply::text(403, "user not found!"),
            Refusal::BadToken => Reply::text(403, "token invalid!"),
            Refusal::Expired => Reply::text(403, "token expired!"),
            Refusal::UnknownUser | Refusal::BadPassword => Reply::text(403, "unknown user!"),
            Refusal::Forbidden => match denied {
                Some((user, resource, action)) => Reply::text(
                    403,
                    format!(
                        "authorization failed! user {user} may not {} resource {resource}",
                        if action == Action::Read {
                            "read"
                        } else {
                            "write"
                        }
                    ),
                ),
                None => Reply::text(403, "authorization failed!"),
            },
            Refusal::RateLimited => Reply::text(
                429,
                format!(
                    "too many failed logins from this address: retry in {LOGIN_FAILURE_WINDOW_S} s"
                ),
            ),
            Refusal::Busy => Reply::text(503, "too many password checks in progress, retry"),
        }
    }

    fn of(e: &token::TokenError) -> Refusal {
        match e {
            token::TokenError::Expired => Refusal::Expired,
            _ => Refusal::BadToken,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct AuthStats {
    pub logins_ok: AtomicU64,
    pub logins_failed: AtomicU64,
    pub refusals: [AtomicU64; 8],
    pub token_hits: AtomicU64,
    pub token_misses: AtomicU64,
    pub password_hits: AtomicU64,
    pub password_misses: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_errors: AtomicU64,
}

impl AuthStats {
    fn refused(&self, r: Refusal) -> Refusal {
        self.refusals[r as usize].fetch_add(1, Ordering::Relaxed);
        r
    }
}

/// What a request presents. Taken in Nacos's order: a token (the
/// `Authorization: Bearer` header, then the `accessToken` header or
/// parameter), else `username` and `password`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    pub token: Option<&'a str>,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
}

/// The node's authentication: one per node, shared by every shard.
pub struct Auth {
    pub signer: Signer,
    pub ttl_s: u64,
    /// `/metrics` needs credentials too.
    pub guard_metrics: bool,
    users_path: PathBuf,
    users: ArcSwap<UserDb>,
    /// Bumped by every reload: cached password checks of an older file
    /// are not trusted.
    generation: AtomicU64,
    pub stats: AuthStats,
    bcrypt: crossbeam_channel::Sender<BcryptJob>,
    limiter: Mutex<Limiter>,
    /// A bcrypt hash of a random password, made at start: checked against
    /// for an unknown user, so that a wrong name costs as long as a wrong
    /// password.
    dummy_hash: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("users_path", &self.users_path)
            .finish_non_exhaustive()
    }
}

struct BcryptJob {
    hash: String,
    password: String,
    reply: futures_channel::oneshot::Sender<bool>,
}

/// Reads and parses the users file.
pub fn read_users(path: &Path) -> Result<UserDb, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the users file {}: {e}", path.display()))?;
    UserDb::parse(&text).map_err(|e| format!("bad users file {}: {e}", path.display()))
}

/// A byte nobody can guess from outside (std's hasher keys are random per
/// process).
fn fastrand_byte() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::shard::now_ms());
    h.finish() as u8
}

pub fn now_s() -> u64 {
    crate::shard::now_ms() / 1000
}

impl Auth {
    /// Auth with `secret` (Base64) and the users of `users_path`; starts
    /// the bcrypt threads.
    pub fn new(
        secret: &str,
        ttl_s: u64,
        users_path: PathBuf,
        guard_metrics: bool,
        cpus: usize,
    ) -> Result<Auth, String> {
        let signer = Signer::from_base64(secret).map_err(|e| e.to_string())?;
        let db = read_users(&users_path)?;
        let (tx, rx) = crossbeam_channel::bounded::<BcryptJob>(BCRYPT_QUEUE_MAX);
        for i in 0..(cpus / 2).clamp(1, BCRYPT_THREADS_MAX) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("bcrypt-{i}"))
                .spawn(move || {
                    for job in rx {
                        let ok = bcrypt::verify(&job.password, &job.hash).unwrap_or(false);
                        let _ = job.reply.send(ok);
                    }
                })
                .map_err(|e| format!("cannot start a bcrypt thread: {e}"))?;
        }
        let random: [u8; 16] = std::array::from_fn(|_| fastrand_byte());
        let dummy_hash = bcrypt::hash(random, BCRYPT_COST).map_err(|e| e.to_string())?;
        tracing::info!(users = db.users.len(), file = %users_path.display(), "auth on");
        Ok(Auth {
            signer,
            ttl_s,
            guard_metrics,
            users_path,
            users: ArcSwap::from_pointee(db),
            generation: AtomicU64::new(0),
            stats: AuthStats::default(),
            bcrypt: tx,
            limiter: Mutex::new(Limiter::default()),
            dummy_hash,
        })
    }

    /// Re-reads the users file (SIGHUP). A bad file is refused with its
    /// reason logged, and the users before it stay.
    pub fn reload(&self) {
        match read_users(&self.users_path) {
            Ok(db) => {
                let n = db.users.len();
                self.users.store(Arc::new(db));
                self.generation.fetch_add(1, Ordering::Relaxed);
                self.stats.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(users = n, "users file reloaded");
            }
            Err(e) => {
                self.stats.reload_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("users file not reloaded, the previous users stay: {e}");
            }
        }
    }

    /// Who presents `creds`: a user of the current file, or why not.
    pub async fn identify(
        &self,
        cache: &RefCell<AuthCache>,
        creds: &Credentials<'_>,
        from: IpAddr,
    ) -> Result<Arc<str>, Refusal> {
        let now = now_s();
        let name = if let Some(t) = creds.token {
            self.token_user(cache, t, now)?
        } else if let (Some(u), Some(p)) = (creds.username, creds.password) {
            self.password_user(cache, u, p, from, now).await?
        } else {
            return Err(self.stats.refused(Refusal::NoCredentials));
        };
        if !self.users.load().users.contains_key(&*name) {
            // A token of a user the file no longer has.
            return Err(self.stats.refused(Refusal::UnknownUser));
        }
        Ok(name)
    }

    /// Whether user `name` (as `identify` found it) may do `action` on
    /// `resource`; the refusal names both.
    pub fn permit(&self, name: &str, resource: &str, action: Action) -> Result<(), Reply> {
        let db = self.users.load();
        match db.users.get(name) {
            None => Err(self.stats.refused(Refusal::UnknownUser).reply(None)),
            Some(user) if !user.allows(resource, action) => {
                self.stats.refused(Refusal::Forbidden);
                Err(Refusal::Forbidden.reply(Some((name, resource, action))))
            }
            Some(_) => Ok(()),
        }
    }

    fn token_user(
        &self,
        cache: &RefCell<AuthCache>,
        t: &str,
        now: u64,
    ) -> Result<Arc<str>, Refusal> {
        let mut c = cache.borrow_mut();
        if let Some((user, exp)) = c.tokens.get(t) {
            if *exp > now {
                self.stats.token_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(user.clone());
            }
            c.tokens.remove(t);
            return Err(self.stats.refused(Refusal::Expired));
        }
        self.stats.token_misses.fetch_add(1, Ordering::Relaxed);
        let claims = self
            .signer
            .verify(t, now)
            .map_err(|e| self.stats.refused(Refusal::of(&e)))?;
        let user: Arc<str> = claims.sub.into();
        if c.tokens.len() >= TOKEN_CACHE_ENTRIES_MAX {
            c.tokens.retain(|_, (_, exp)| *exp > now);
            if c.tokens.len() >= TOKEN_CACHE_ENTRIES_MAX {
                c.tokens.clear();
            }
        }
        c.tokens.insert(t.into(), (user.clone(), claims.exp));
        Ok(user)
    }

    async fn password_user(
        &self,
        cache: &RefCell<AuthCache>,
        user: &str,
        password: &str,
        from: IpAddr,
        now: u64,
    ) -> Result<Arc<str>, Refusal> {
        // Keyed, so that the cache holds no password nor a plain hash of one.
        let key = self
            .signer
            .mac(&[b"password\0", user.as_bytes(), b"\0", password.as_bytes()]);
        let generation = self.generation.load(Ordering::Relaxed);
        if let Some(e) = cache.borrow().passwords.get(&key) {
            if e.until > now && e.generation == generation {
                self.stats.password_hits.fetch_add(1, Ordering::Relaxed);
                return if e.ok {
                    Ok(e.user.clone())
                } else {
                    Err(self.stats.refused(Refusal::BadPassword))
                };
            }
        }
        self.stats.password_misses.fetch_add(1, Ordering::Relaxed);
        let ok = self.check_password(user, password, from, now).await?;
        let mut c = cache.borrow_mut();
        if c.passwords.len() >= PASSWORD_CACHE_ENTRIES_MAX {
            c.passwords.retain(|_, e| e.until > now);
            if c.passwords.len() >= PASSWORD_CACHE_ENTRIES_MAX {
                c.passwords.clear();
            }
        }
        let user: Arc<str> = user.into();
        let until = now
            + if ok {
                PASSWORD_CACHE_OK_S
            } else {
                PASSWORD_CACHE_BAD_S
            };
        c.passwords.insert(
            key,
            PasswordEntry {
                user: user.clone(),
                ok,
                until,
                generation,
            },
        );
        if ok {
            Ok(user)
        } else {
            Err(self.stats.refused(Refusal::BadPassword))
        }
    }

    /// One bcrypt check on a bcrypt thread, unless `from` failed too often.
    async fn check_password(
        &self,
        user: &str,
        password: &str,
        from: IpAddr,
        now: u64,
    ) -> Result<bool, Refusal> {
        if self.limiter.lock().expect("limiter").blocked(from, now) {
            return Err(self.stats.refused(Refusal::RateLimited));
        }
        let hash = self
            .users
            .load()
            .users
            .get(user)
            .map(|u| u.password_hash.clone());
        let known = hash.is_some();
        let (tx, rx) = futures_channel::oneshot::channel();
        let job = BcryptJob {
            hash: hash.unwrap_or_else(|| self.dummy_hash.clone()),
            password: password.to_string(),
            reply: tx,
        };
        if self.bcrypt.try_send(job).is_err() {
            return Err(self.stats.refused(Refusal::Busy));
        }
        let ok = rx.await.unwrap_or(false) && known;
        if !ok {
            self.limiter.lock().expect("limiter").failed(from, now);
        }
        Ok(ok)
    }

    /// `POST|GET /nacos/v1/auth/login` (and `/users/login`).
    pub async fn login(
        &self,
        cache: &RefCell<AuthCache>,
        username: Option<&str>,
        password: Option<&str>,
        from: IpAddr,
    ) -> Reply {
        let (Some(u), Some(p)) = (username, password) else {
            self.stats.logins_failed.fetch_add(1, Ordering::Relaxed);
            return Reply::text(403, "unknown user!");
        };
        let now = now_s();
        match self.password_user(cache, u, p, from, now).await {
            Ok(name) => {
                let admin = self.users.load().users.get(&*name).is_some_and(|u| u.admin);
                self.stats.logins_ok.fetch_add(1, Ordering::Relaxed);
                let token = self.signer.issue(&name, now + self.ttl_s);
                Reply::json_value(&serde_json::json!({
                    "accessToken": token,
                    "tokenTtl": self.ttl_s,
                    "globalAdmin": admin,
                    "username": &*name,
                }))
            }
            Err(r) => {
                self.stats.logins_failed.fetch_add(1, Ordering::Relaxed);
                r.reply(None)
            }
        }
    }
}

struct PasswordEntry {
    user: Arc<str>,
    ok: bool,
    until: u64,
    generation: u64,
}

/// One shard's verified credentials.
#[derive(Default)]
pub struct AuthCache {
    /// token → (user, expiry s).
    tokens: crate::store::Map<Box<str>, (Arc<str>, u64)>,
    /// keyed hash of (user, password) → the check's result.
    passwords: HashMap<[u8; 32], PasswordEntry>,
}

/// Failed logins per source address, in fixed windows.
#[derive(Default)]
struct Limiter {
    /// address → (window start s, failures in it).
    addrs: HashMap<IpAddr, (u64, u32)>,
}

impl Limiter {
    fn blocked(&self, from: IpAddr, now: u64) -> bool {
        self.addrs.get(&from).is_some_and(|(start, n)| {
            now < start + LOGIN_FAILURE_WINDOW_S && *n >= LOGIN_FAILURES_MAX
        })
    }

    fn failed(&mut self, from: IpAddr, now: u64) {
        if self.addrs.len() >= LIMITER_ADDRS_MAX && !self.addrs.contains_key(&from) {
            self.addrs
                .retain(|_, (start, _)| now < *start + LOGIN_FAILURE_WINDOW_S);
            if self.addrs.len() >= LIMITER_ADDRS_MAX {
                self.addrs.clear();
            }
        }
        let e = self.addrs.entry(from).or_insert((now, 0));
        if now >= e.0 + LOGIN_FAILURE_WINDOW_S {
            *e = (now, 0);
        }
        e.1 += 1;
    }
}

/// `distro-registry hash-password`: the bcrypt hash of one line of
/// standard input (without its line end).
pub fn hash_password_from_stdin() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err("an empty password; give it on standard input".into());
    }
    bcrypt::hash(password, BCRYPT_COST).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_blocks_an_address_for_its_window() {
        let mut l = Limiter::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..LOGIN_FAILURES_MAX {
            assert!(!l.blocked(a, 100));
            l.failed(a, 100);
        }
        assert!(l.blocked(a, 100));
        assert!(!l.blocked(b, 100));
        assert!(l.blocked(a, 100 + LOGIN_FAILURE_WINDOW_S - 1));
        assert!(!l.blocked(a, 100 + LOGIN_FAILURE_WINDOW_S));
        l.failed(a, 100 + LOGIN_FAILURE_WINDOW_S);
        assert!(!l.blocked(a, 100 + LOGIN_FAILURE_WINDOW_S));
    }
}
