//! Node configuration: command-line flags, `DISTRO_REGISTRY_*` environment
//! variables and an optional TOML file (`--config`), in that order of
//! precedence, over the defaults.
//!
//! Every setting is declared once in `settings!`, which generates the clap
//! flags, the TOML file's shape and the resolved `Config`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// What else the binary does besides running a node.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Reads a password on standard input and prints its bcrypt hash, for
    /// the `password_hash` of a user in the --auth-users file.
    HashPassword,
}

macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr ),* $(,)?) => {
        /// Command-line flags; every one also reads `DISTRO_REGISTRY_<NAME>`.
        #[derive(Parser, Debug, Default)]
        #[command(name = "distro-registry", version, about = "A Nacos 1.x naming-compatible registry node, thread-per-core on io_uring")]
        pub struct Cli {
            /// TOML file with any of the settings below (kebab-case keys).
            #[arg(long, env = "DISTRO_REGISTRY_CONFIG")]
            pub config: Option<PathBuf>,
            #[command(subcommand)]
            pub command: Option<Command>,
            $(
                $(#[doc = $doc])*
                #[arg(long, value_parser = parse_setting::<$ty>)]
                pub $name: Option<$ty>,
            )*
        }

        /// (setting, its default as `--help` shows it).
        fn default_texts() -> Vec<(&'static str, String)> {
            let d = Config::default();
            vec![ $( (stringify!($name), SettingValue::show(&d.$name)), )* ]
        }

        /// The optional TOML file.
        #[derive(Deserialize, Debug, Default)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct FileConfig {
            $( pub $name: Option<$ty>, )*
        }

        /// Resolved settings.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $name: $default, )* }
            }
        }

        impl Config {
            fn merge(cli: Cli, file: FileConfig) -> Result<Config, ConfigError> {
                let d = Config::default();
                Ok(Config {
                    $( $name: match cli.$name {
                        Some(v) => v,
                        None => match env_value(stringify!($name))? {
                            Some(v) => v,
                            None => file.$name.unwrap_or(d.$name),
                        },
                    }, )*
                })
            }
        }
    };
}

/// How a setting's value is read from a flag, a variable or the file,
/// and shown in `--help`.
pub trait SettingValue: Sized + Clone + Send + Sync + 'static {
    fn parse_setting(s: &str) -> Result<Self, String>;
    fn show(&self) -> String;
}

macro_rules! whole_number {
    ($($t:ty),*) => {$(
        impl SettingValue for $t {
            fn parse_setting(s: &str) -> Result<Self, String> {
                s.trim()
                    .parse()
                    .map_err(|e| format!("{s:?} is not a whole number ({e})"))
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
whole_number!(u64, usize);

impl SettingValue for bool {
    fn parse_setting(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(format!("{s:?} is neither true nor false")),
        }
    }
    fn show(&self) -> String {
        if *self {
            "on".into()
        } else {
            "off".into()
        }
    }
}

/// Settings given as a bare switch (`--auth`), also `--auth=false`.
const SWITCHES: [&str; 2] = ["auth", "auth_metrics"];

impl SettingValue for String {
    fn parse_setting(s: &str) -> Result<Self, String> {
        Ok(s.to_string())
    }
    fn show(&self) -> String {
        if self.is_empty() {
            "none".into()
        } else {
            self.clone()
        }
    }
}

impl SettingValue for SocketAddr {
    fn parse_setting(s: &str) -> Result<Self, String> {
        resolve_addr(s)
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// `ip:port`, or `host:port` resolved (an IPv4 address preferred, as
/// `localhost` should mean 127.0.0.1 here).
pub fn resolve_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let t = s.trim();
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bad = || format!("{t:?} is neither ip:port nor host:port (for example 127.0.0.1:8848)");
    if t.rsplit_once(':')
        .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(bad());
    }
    let all: Vec<SocketAddr> = t
        .to_socket_addrs()
        .map_err(|e| format!("{t:?}: cannot resolve the host name ({e}); give an IP address"))?
        .collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(bad)
}

/// Where the gRPC front end listens (Nacos 2.x/3.x clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcPort {
    /// The HTTP port + 1000, as Nacos clients assume (HTTP port 0: any).
    Offset,
    /// `0`: no gRPC front end.
    Off,
    Port(u16),
}

/// What Nacos clients add to the HTTP port to find the gRPC one.
pub const GRPC_PORT_OFFSET: u16 = 1000;

impl SettingValue for GrpcPort {
    fn parse_setting(s: &str) -> Result<Self, String> {
        match s.trim().parse::<u16>() {
            Ok(0) => Ok(GrpcPort::Off),
            Ok(p) => Ok(GrpcPort::Port(p)),
            Err(e) => Err(format!(
                "{s:?} is not a port number ({e}); 0 turns gRPC off"
            )),
        }
    }
    fn show(&self) -> String {
        match self {
            GrpcPort::Offset => format!("the HTTP port + {GRPC_PORT_OFFSET}"),
            GrpcPort::Off => "0 (off)".into(),
            GrpcPort::Port(p) => p.to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for GrpcPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = u16::deserialize(d)?;
        Ok(if p == 0 {
            GrpcPort::Off
        } else {
            GrpcPort::Port(p)
        })
    }
}

/// Where the node keeps its store (`--data-dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    /// `none`: everything in memory, nothing survives a restart.
    None,
    Path(PathBuf),
}

/// The default data directory, relative to where the node starts.
pub const DATA_DIR_DEFAULT: &str = "./data";

impl SettingValue for DataDir {
    fn parse_setting(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" => Err("an empty --data-dir; give a directory, or none".into()),
            "none" => Ok(DataDir::None),
            p => Ok(DataDir::Path(PathBuf::from(p))),
        }
    }
    fn show(&self) -> String {
        match self {
            DataDir::None => "none".into(),
            DataDir::Path(p) => p.display().to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for DataDir {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DataDir::parse_setting(&s).map_err(serde::de::Error::custom)
    }
}

fn parse_setting<T: SettingValue>(s: &str) -> Result<T, String> {
    T::parse_setting(s)
}

/// Reads `DISTRO_REGISTRY_<NAME>` and parses it like the flag would.
fn env_value<T: SettingValue>(name: &str) -> Result<Option<T>, ConfigError> {
    let var = env_name(name);
    match std::env::var(&var) {
        Ok(v) if !v.trim().is_empty() => T::parse_setting(v.trim())
            .map(Some)
            .map_err(|e| ConfigError::Invalid(format!("{var}={v}: {e}"))),
        _ => Ok(None),
    }
}

fn env_name(setting: &str) -> String {
    format!("DISTRO_REGISTRY_{}", setting.to_ascii_uppercase())
}

fn default_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

settings! {
    /// Address to listen on (TCP for HTTP; UDP pushes leave from its IP).
    bind: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8848)),
    /// Shards, one per core: at most the CPUs the node may use (README:
    /// choosing --cores).
    cores: usize = default_cores(),
    /// Shard threads run under SCHED_BATCH (Linux): a shard woken while
    /// another thread runs on its core does not preempt it, and then takes
    /// every completion that arrived meanwhile in one turn. Where a core is
    /// shared this costs less CPU per request (docs/performance.md); `off`
    /// for the default policy.
    shard_sched_batch: bool = true,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `debug`.
    log_level: String = "info".to_string(),
    /// Beat interval told to clients, ms.
    beat_interval_ms: u64 = 5_000,
    /// No beat for this long makes an ephemeral instance unhealthy, ms.
    unhealthy_timeout_ms: u64 = 15_000,
    /// No beat for this long deletes an ephemeral instance, ms.
    delete_timeout_ms: u64 = 30_000,
    /// Resolution of the expiry timing wheel, ms.
    expiry_tick_ms: u64 = 100,
    /// Changes to a service are coalesced this long before a UDP push, ms.
    push_delay_ms: u64 = 200,
    /// A push not acknowledged within this is sent once more, ms.
    push_ack_timeout_ms: u64 = 10_000,
    /// A push subscriber lives this long after its last list query, ms.
    subscriber_ttl_ms: u64 = 10_000,
    /// Subscribers kept per service; past it the oldest is replaced.
    subscribers_per_service_max: usize = 4_096,
    /// Open client connections for the whole node; past it: 503 and close.
    max_connections: usize = 10_000,
    /// Request line plus headers, bytes; past it: 431.
    header_bytes_max: usize = 8 * 1024,
    /// Request body, bytes; past it: 413.
    body_bytes_max: usize = 1024 * 1024,
    /// A connection with no request for this long is closed, ms.
    idle_timeout_ms: u64 = 60_000,
    /// Messages waiting in one shard's inbox; past it: 503.
    inbox_capacity: usize = 4_096,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish, ms.
    shutdown_grace_ms: u64 = 5_000,
    /// Cluster members, `ip:port,ip:port,...`, this node included (as
    /// --advertise, or --bind, names it); the same list on every node. None
    /// (and no --cluster-conf): standalone.
    peers: String = String::new(),
    /// Nacos `cluster.conf` file with the members, one `ip:port` a line;
    /// re-read when it changes (every second) and on SIGHUP.
    cluster_conf: String = String::new(),
    /// This node's `ip:port` as the members list names it (default: the
    /// bind address).
    advertise: String = String::new(),
    /// Shared secret peers send with every peer request; required with
    /// peers.
    cluster_token: String = String::new(),
    /// Changes to a service are coalesced this long before replication, ms.
    sync_delay_ms: u64 = 100,
    /// Each node reports to one other member this often, ms.
    report_interval_ms: u64 = 2_000,
    /// Each node sends the checksums of the services it owns this often, ms.
    verify_interval_ms: u64 = 5_000,
    /// Request body of a peer request (replication batches, checksums), bytes.
    peer_body_bytes_max: usize = 64 * 1024 * 1024,
    /// gRPC port for Nacos 2.x/3.x clients; 0 turns it off.
    grpc_port: GrpcPort = GrpcPort::Offset,
    /// One gRPC message, bytes; past it the call fails with
    /// RESOURCE_EXHAUSTED (the Java server's limit).
    grpc_message_bytes_max: usize = 10 * 1024 * 1024,
    /// A gRPC connection silent this long gets a ClientDetectionRequest, ms.
    grpc_probe_idle_ms: u64 = 20_000,
    /// A probed gRPC connection that does not answer within this is closed
    /// and its instances removed, ms.
    grpc_probe_timeout_ms: u64 = 5_000,
    /// Directory of the node's store (persistent instances, service
    /// fields, ephemeral instances saved behind); `none` keeps everything
    /// in memory. One node per directory.
    data_dir: DataDir = DataDir::Path(PathBuf::from(DATA_DIR_DEFAULT)),
    /// Client authentication: every client request needs a token (or
    /// username and password) of a user in --auth-users (README: auth).
    auth: bool = false,
    /// Base64 of at least 32 random bytes, the same on every node: signs
    /// the access tokens. Required with --auth; there is no default.
    auth_secret: String = String::new(),
    /// Access tokens are valid this long after login, s.
    auth_token_ttl_s: u64 = 18_000,
    /// TOML file of users and roles (README: auth); re-read on SIGHUP.
    auth_users: String = String::new(),
    /// With --auth, `/metrics` needs credentials too.
    auth_metrics: bool = false,
}

impl FileConfig {
    /// The file's settings. `peers` may be a list of strings as well as
    /// one comma-separated string; `bind` may name a host.
    pub fn from_toml(text: &str) -> Result<FileConfig, toml::de::Error> {
        let mut table: toml::Table = toml::from_str(text)?;
        if let Some(toml::Value::Array(items)) = table.get("peers") {
            if let Some(list) = items
                .iter()
                .map(|v| v.as_str())
                .collect::<Option<Vec<&str>>>()
            {
                let joined = list.join(",");
                table.insert("peers".into(), toml::Value::String(joined));
            }
        }
        if let Some(toml::Value::String(b)) = table.get("bind") {
            if let Ok(a) = resolve_addr(b) {
                table.insert("bind".into(), toml::Value::String(a.to_string()));
            }
        }
        toml::Value::Table(table).try_into()
    }
}

impl Config {
    /// Parses flags and environment, reads the TOML file if one is named.
    pub fn load() -> Result<Config, ConfigError> {
        Self::from_cli(Self::parse_cli())
    }

    /// The command line as given (a subcommand, or a node's flags).
    pub fn parse_cli() -> Cli {
        let matches = Self::command().get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// The command line, its help naming each setting's variable and
    /// default (the defaults are not clap's: a flag left out falls back to
    /// the variable, then the file, then the default).
    pub fn command() -> clap::Command {
        let mut cmd = Cli::command();
        for (name, default) in default_texts() {
            let default = if name == "cores" {
                format!("the CPUs this process may use, {default} here")
            } else {
                default
            };
            let tail = format!("[env: {}] [default: {default}]", env_name(name));
            if SWITCHES.contains(&name) {
                cmd = cmd.mut_arg(name, |a| {
                    a.num_args(0..=1)
                        .require_equals(true)
                        .default_missing_value("true")
                });
            }
            cmd = cmd.mut_arg(name, |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                let long = a.get_long_help().map(|h| h.to_string());
                let a = a.help(format!("{help} {tail}"));
                match long {
                    Some(l) => a.long_help(format!("{l}\n{tail}")),
                    None => a,
                }
            });
        }
        cmd
    }

    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                FileConfig::from_toml(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            None => FileConfig::default(),
        };
        let c = Config::merge(cli, file)?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("cores", self.cores as u64),
            ("beat-interval-ms", self.beat_interval_ms),
            ("unhealthy-timeout-ms", self.unhealthy_timeout_ms),
            ("delete-timeout-ms", self.delete_timeout_ms),
            ("expiry-tick-ms", self.expiry_tick_ms),
            ("push-delay-ms", self.push_delay_ms),
            ("push-ack-timeout-ms", self.push_ack_timeout_ms),
            ("subscriber-ttl-ms", self.subscriber_ttl_ms),
            (
                "subscribers-per-service-max",
                self.subscribers_per_service_max as u64,
            ),
            ("max-connections", self.max_connections as u64),
            ("header-bytes-max", self.header_bytes_max as u64),
            ("body-bytes-max", self.body_bytes_max as u64),
            ("idle-timeout-ms", self.idle_timeout_ms),
            ("inbox-capacity", self.inbox_capacity as u64),
            ("sync-delay-ms", self.sync_delay_ms),
            ("report-interval-ms", self.report_interval_ms),
            ("verify-interval-ms", self.verify_interval_ms),
            ("peer-body-bytes-max", self.peer_body_bytes_max as u64),
            ("grpc-message-bytes-max", self.grpc_message_bytes_max as u64),
            ("grpc-probe-idle-ms", self.grpc_probe_idle_ms),
            ("grpc-probe-timeout-ms", self.grpc_probe_timeout_ms),
            ("auth-token-ttl-s", self.auth_token_ttl_s),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("--{name} must be positive")));
            }
        }
        if !self.peers.trim().is_empty() && !self.cluster_conf.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "give the members with --peers or --cluster-conf, not both".into(),
            ));
        }
        self.cluster_members()?;
        self.grpc_addr(self.bind)?;
        self.check_auth()?;
        Ok(())
    }

    /// `--auth` needs a secret of its own (no built-in default: Nacos
    /// shipped one, and every node that kept it could be entered by anyone)
    /// and a users file.
    fn check_auth(&self) -> Result<(), ConfigError> {
        if !self.auth {
            return Ok(());
        }
        if self.auth_secret.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "--auth is on but --auth-secret is not set: tokens are signed with a secret \
                 of your own, the same on every node, and there is no built-in one; make one \
                 with `head -c 32 /dev/urandom | base64` and give it to every node"
                    .into(),
            ));
        }
        crate::auth::Signer::from_base64(&self.auth_secret)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.auth_users.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "--auth is on but --auth-users is not set: give the TOML file of users and \
                 roles (README: auth)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The gRPC listen address for an HTTP listener on `http` (None: off).
    pub fn grpc_addr(&self, http: SocketAddr) -> Result<Option<SocketAddr>, ConfigError> {
        let port = match self.grpc_port {
            GrpcPort::Off => return Ok(None),
            GrpcPort::Port(p) => p,
            GrpcPort::Offset if http.port() == 0 => 0,
            GrpcPort::Offset => http.port().checked_add(GRPC_PORT_OFFSET).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "the gRPC port would be {} + {GRPC_PORT_OFFSET}, past 65535: give --grpc-port",
                    http.port()
                ))
            })?,
        };
        if port != 0 && port == http.port() {
            return Err(ConfigError::Invalid(format!(
                "--grpc-port {port} is the HTTP port"
            )));
        }
        Ok(Some(SocketAddr::new(http.ip(), port)))
    }

    /// This node's address and the cluster's members (SPEC 4.1), or None
    /// for a standalone node. Refuses a cluster without a token, and an
    /// advertised address that is not a member.
    pub fn cluster_members(&self) -> Result<Option<(String, Vec<String>)>, ConfigError> {
        let Some(members) = self.members()? else {
            return Ok(None);
        };
        if self.cluster_token.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "peers are configured but --cluster-token is not set: nodes accept peer \
                 requests (replication, reports, snapshots) only with the shared cluster \
                 token, so a cluster node refuses to start without one; give every node the \
                 same --cluster-token"
                    .into(),
            ));
        }
        let me = if self.advertise.trim().is_empty() {
            if self.bind.port() == 0 || self.bind.ip().is_unspecified() {
                return Err(ConfigError::Invalid(format!(
                    "--bind {} cannot name this node to its peers; give --advertise ip:port",
                    self.bind
                )));
            }
            self.bind.to_string()
        } else {
            self.advertise
                .trim()
                .parse::<SocketAddr>()
                .map_err(|_| {
                    ConfigError::Invalid(format!("--advertise {} is not ip:port", self.advertise))
                })?
                .to_string()
        };
        if !members.contains(&me) {
            return Err(ConfigError::Invalid(format!(
                "this node ({me}) is not among the members {members:?}; list it, or fix --advertise"
            )));
        }
        Ok(Some((me, members)))
    }

    /// The configured members, or None for a standalone node.
    pub fn members(&self) -> Result<Option<Vec<String>>, ConfigError> {
        use crate::distro::conf;
        if !self.peers.trim().is_empty() {
            return conf::parse_peers(&self.peers)
                .map(Some)
                .map_err(|e| ConfigError::Invalid(format!("--peers: {e}")));
        }
        if !self.cluster_conf.trim().is_empty() {
            let path = PathBuf::from(self.cluster_conf.trim());
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            return conf::parse_cluster_conf(&text)
                .map(Some)
                .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())));
        }
        Ok(None)
    }
}
