//! `--auth` through real HTTP (issue 13): login, tokens in every place a
//! Nacos client puts them, roles, expiry, SIGHUP reloads, start-up
//! refusals, the failed-login limiter, and the /metrics families.

mod common;

use std::time::Duration;

use common::auth::{login, token, users_toml, UsersFile, SECRET};
use common::{eventually, port_of, reserved_ports, unsafe_kill, Node, Resp};
use distro_registry::distro::hash::owner_index;

const USERS: &[(&str, &str, &[&str])] = &[
    ("nacos", "nacos-pw", &["ROLE_ADMIN"]),
    ("reader", "reader-pw", &["read-all"]),
    ("orders", "orders-pw", &["orders-rw"]),
];

const ROLES: &[(&str, &[(&str, &str)])] = &[
    ("read-all", &[("*:*:naming/*", "r")]),
    (
        "orders-rw",
        &[
            ("public:DEFAULT_GROUP:naming/orders", "rw"),
            ("public:*:naming/*", "r"),
        ],
    ),
];

fn node_with(file: &UsersFile, extra: &[&str]) -> Node {
    let mut args: Vec<String> = file.flags();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    Node::start(&args)
}

fn register_q(n: &Node, svc: &str, ip: &str, creds: &str) -> Resp {
    n.req(
        "POST",
        &format!("/nacos/v1/ns/instance?serviceName={svc}&ip={ip}&port=8080{creds}"),
        "",
    )
}

fn list_q(n: &Node, svc: &str, creds: &str) -> Resp {
    n.get(&format!(
        "/nacos/v1/ns/instance/list?serviceName={svc}{creds}"
    ))
}

fn hosts(r: &Resp) -> Vec<String> {
    assert_eq!(r.status, 200, "{}", r.body);
    let mut v: Vec<String> = r.json()["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["ip"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn refusals(n: &Node, reason: &str) -> f64 {
    n.metric(&format!(
        "registry_auth_refusals_total{{reason=\"{reason}\"}}"
    ))
}

#[test]
fn login_answers_a_token_that_every_client_api_accepts_in_each_place() {
    let file = UsersFile::new("login", &users_toml(USERS, ROLES));
    let n = node_with(&file, &[]);

    // Login as Nacos has it: POST form, GET query, and the users/ path.
    let r = login(&n, "nacos", "nacos-pw");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["tokenTtl"], 18000);
    assert_eq!(v["globalAdmin"], true);
    let admin = v["accessToken"].as_str().unwrap().to_string();
    assert_eq!(admin.split('.').count(), 3, "a JWT: {admin}");
    let r = n.get("/nacos/v1/auth/users/login?username=reader&password=reader-pw");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["globalAdmin"], false);
    let r = n.req(
        "POST",
        "/nacos/v1/auth/users/login?username=orders&password=orders-pw",
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // Wrong credentials: Nacos's words.
    for (u, p) in [("nacos", "wrong"), ("nobody", "nacos-pw"), ("nacos", "")] {
        let r = login(&n, u, p);
        assert_eq!(r.status, 403, "{u}/{p}: {}", r.body);
        assert!(r.body.contains("unknown user!"), "{}", r.body);
    }

    // Token as Bearer header, as accessToken parameter (query and form),
    // and username+password parameters.
    let r = n.req_h(
        "POST",
        "/nacos/v1/ns/instance?serviceName=svc&ip=10.0.0.1&port=8080",
        "",
        &[("Authorization", &format!("Bearer {admin}"))],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = register_q(&n, "svc", "10.0.0.2", &format!("&accessToken={admin}"));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = n.req(
        "POST",
        "/nacos/v1/ns/instance",
        &format!("serviceName=svc&ip=10.0.0.3&port=8080&accessToken={admin}"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = register_q(&n, "svc", "10.0.0.4", "&username=nacos&password=nacos-pw");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        hosts(&list_q(&n, "svc", &format!("&accessToken={admin}"))),
        ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
    );

    // The token cache was used: later requests with the same token hit it.
    assert!(n.metric("registry_auth_cache_total{kind=\"token\",result=\"hit\"}") >= 1.0);
    assert!(n.metric("registry_auth_logins_total{result=\"ok\"}") >= 3.0);
    assert!(n.metric("registry_auth_logins_total{result=\"failed\"}") >= 3.0);
}

#[test]
fn requests_without_good_credentials_are_refused_and_change_nothing() {
    let file = UsersFile::new("refuse", &users_toml(USERS, ROLES));
    let n = node_with(&file, &[]);
    let admin = token(&n, "nacos", "nacos-pw");
    let creds = format!("&accessToken={admin}");
    assert_eq!(register_q(&n, "svc", "10.0.0.1", &creds).status, 200);

    // No credentials at all.
    let r = register_q(&n, "svc", "10.0.0.9", "");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("user not found!"), "{}", r.body);
    let r = list_q(&n, "svc", "");
    assert_eq!(r.status, 403, "{}", r.body);
    let r = n.req(
        "DELETE",
        "/nacos/v1/ns/instance?serviceName=svc&ip=10.0.0.1&port=8080",
        "",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = n.req("DELETE", "/nacos/v1/ns/service?serviceName=svc", "");
    assert_eq!(r.status, 403, "{}", r.body);
    let r = n.get("/nacos/v1/ns/service/list?pageNo=1&pageSize=10");
    assert_eq!(r.status, 403, "{}", r.body);

    // A token that is not ours: bad signature, garbage, a cut one.
    let mut forged = admin.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [forged.as_str(), "garbage", &admin[..admin.len() / 2]] {
        let r = n.req_h(
            "POST",
            "/nacos/v1/ns/instance?serviceName=svc&ip=10.0.0.9&port=8080",
            "",
            &[("Authorization", &format!("Bearer {bad}"))],
        );
        assert_eq!(r.status, 403, "{bad}: {}", r.body);
        assert!(r.body.contains("token invalid!"), "{}", r.body);
    }
    // A wrong password as parameters.
    let r = register_q(&n, "svc", "10.0.0.9", "&username=nacos&password=nope");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("unknown user!"), "{}", r.body);

    // Nothing changed: one instance, the service still there.
    assert_eq!(hosts(&list_q(&n, "svc", &creds)), ["10.0.0.1"]);
    assert!(refusals(&n, "no_credentials") >= 5.0);
    assert!(refusals(&n, "bad_token") >= 3.0);

    // Health endpoints stay open, and so does /metrics without --auth-metrics.
    assert_eq!(n.get("/nacos/v1/console/health/liveness").status, 200);
    assert_eq!(n.get("/nacos/v1/console/health/readiness").status, 200);
    assert_eq!(n.get("/metrics").status, 200);
}

#[test]
fn roles_decide_what_a_user_may_read_and_write() {
    let file = UsersFile::new("roles", &users_toml(USERS, ROLES));
    let n = node_with(&file, &[]);
    let admin = format!("&accessToken={}", token(&n, "nacos", "nacos-pw"));
    let reader = format!("&accessToken={}", token(&n, "reader", "reader-pw"));
    let orders = format!("&accessToken={}", token(&n, "orders", "orders-pw"));
    assert_eq!(register_q(&n, "orders", "10.0.0.1", &admin).status, 200);
    assert_eq!(register_q(&n, "billing", "10.0.0.1", &admin).status, 200);

    // The reader lists anything and registers nothing.
    assert_eq!(hosts(&list_q(&n, "orders", &reader)), ["10.0.0.1"]);
    assert_eq!(hosts(&list_q(&n, "billing", &reader)), ["10.0.0.1"]);
    let r = n.get(&format!(
        "/nacos/v1/ns/service/list?pageNo=1&pageSize=10{reader}"
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["count"], 2);
    let r = register_q(&n, "orders", "10.0.0.2", &reader);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("reader") && r.body.contains("public:DEFAULT_GROUP:naming/orders"),
        "the refusal names the user and the resource: {}",
        r.body
    );
    let beat = r#"{"ip":"10.0.0.1","port":8080,"serviceName":"DEFAULT_GROUP@@orders"}"#;
    let r = n.req(
        "PUT",
        "/nacos/v1/ns/instance/beat",
        &format!(
            "serviceName=orders&beat={}{reader}",
            common::urlencode(beat)
        ),
    );
    assert_eq!(r.status, 403, "a beat is a write: {}", r.body);

    // orders-rw writes its own service, reads the others, writes no other.
    assert_eq!(register_q(&n, "orders", "10.0.0.3", &orders).status, 200);
    let r = register_q(&n, "billing", "10.0.0.3", &orders);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("public:DEFAULT_GROUP:naming/billing"),
        "{}",
        r.body
    );
    assert_eq!(hosts(&list_q(&n, "billing", &orders)), ["10.0.0.1"]);
    // Its read grant is for namespace public only.
    let r = n.get(&format!(
        "/nacos/v1/ns/instance/list?serviceName=billing&namespaceId=dev{orders}"
    ));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("dev:DEFAULT_GROUP:naming/billing"),
        "{}",
        r.body
    );
    // Another group is readable (public:*:naming/*) but not writable.
    let r = register_q(
        &n,
        "orders",
        "10.0.0.4",
        &format!("&groupName=OTHER{orders}"),
    );
    assert_eq!(r.status, 403, "{}", r.body);

    assert_eq!(
        hosts(&list_q(&n, "orders", &admin)),
        ["10.0.0.1", "10.0.0.3"]
    );
    assert_eq!(hosts(&list_q(&n, "billing", &admin)), ["10.0.0.1"]);
    assert!(refusals(&n, "forbidden") >= 5.0);
}

#[test]
fn an_expired_token_is_refused() {
    let file = UsersFile::new("expiry", &users_toml(USERS, ROLES));
    // exp is in whole seconds: a 2 s token lives 1 to 2 s.
    let n = node_with(&file, &["--auth-token-ttl-s", "2"]);
    let r = login(&n, "nacos", "nacos-pw");
    assert_eq!(r.json()["tokenTtl"], 2);
    let t = r.json()["accessToken"].as_str().unwrap().to_string();
    let creds = format!("&accessToken={t}");
    assert_eq!(register_q(&n, "svc", "10.0.0.1", &creds).status, 200);
    std::thread::sleep(Duration::from_millis(3100));
    let r = register_q(&n, "svc", "10.0.0.2", &creds);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("token expired!"), "{}", r.body);
    assert!(refusals(&n, "expired_token") >= 1.0);
    let fresh = format!("&accessToken={}", token(&n, "nacos", "nacos-pw"));
    assert_eq!(hosts(&list_q(&n, "svc", &fresh)), ["10.0.0.1"]);
}

#[test]
fn sighup_reloads_the_users_file_and_a_bad_file_keeps_the_old_users() {
    let file = UsersFile::new("reload", &users_toml(&USERS[..1], &[]));
    let n = node_with(&file, &[]);
    let admin = token(&n, "nacos", "nacos-pw");
    assert_eq!(login(&n, "reader", "reader-pw").status, 403);

    file.write(&users_toml(USERS, ROLES));
    unsafe_kill(n.child.id(), "HUP");
    assert!(
        eventually(Duration::from_secs(5), || login(&n, "reader", "reader-pw")
            .status
            == 200),
        "the added user can log in after SIGHUP"
    );
    assert_eq!(n.metric("registry_auth_reloads_total{result=\"ok\"}"), 1.0);

    // A file that does not parse: refused, the users stay as they were.
    file.write("[[users]]\nusername = \"x\"\npassword_hash = \"not bcrypt\"\n");
    unsafe_kill(n.child.id(), "HUP");
    assert!(eventually(Duration::from_secs(5), || n
        .metric("registry_auth_reloads_total{result=\"refused\"}")
        == 1.0));
    assert_eq!(login(&n, "reader", "reader-pw").status, 200);
    let creds = format!("&accessToken={admin}");
    assert_eq!(register_q(&n, "svc", "10.0.0.1", &creds).status, 200);

    // A user taken out of the file: its unexpired token no longer works.
    let reader = format!("&accessToken={}", token(&n, "reader", "reader-pw"));
    assert_eq!(list_q(&n, "svc", &reader).status, 200);
    file.write(&users_toml(&USERS[..1], &[]));
    unsafe_kill(n.child.id(), "HUP");
    assert!(
        eventually(Duration::from_secs(5), || list_q(&n, "svc", &reader).status
            == 403),
        "a removed user's token is refused"
    );
    assert_eq!(list_q(&n, "svc", &creds).status, 200);
}

#[test]
fn a_node_with_auth_refuses_to_start_without_what_it_needs() {
    let file = UsersFile::new("start", &users_toml(USERS, ROLES));
    let bin = env!("CARGO_BIN_EXE_distro-registry");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .env(common::DATA_DIR_ENV, "none")
            .args(["--bind", "127.0.0.1:0", "--grpc-port", "0"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--auth", "--auth-users", file.path()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--auth-secret is not set"), "{err}");
    assert!(err.contains("head -c 32 /dev/urandom | base64"), "{err}");
    let (code, err) = run(&[
        "--auth",
        "--auth-secret",
        "c2hvcnQ=",
        "--auth-users",
        file.path(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("32"), "says how long a secret must be: {err}");
    let (code, err) = run(&[
        "--auth",
        "--auth-secret",
        "not base64!!",
        "--auth-users",
        file.path(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = run(&["--auth", "--auth-secret", SECRET]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--auth-users"), "{err}");
    let missing = std::env::temp_dir().join("dr-users-does-not-exist.toml");
    let (code, err) = run(&[
        "--auth",
        "--auth-secret",
        SECRET,
        "--auth-users",
        missing.to_str().unwrap(),
    ]);
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("dr-users-does-not-exist.toml"),
        "names the file: {err}"
    );
    let bad = UsersFile::new("start-bad", "[[users]]\nusername = 3\n");
    let (code, err) = run(&[
        "--auth",
        "--auth-secret",
        SECRET,
        "--auth-users",
        bad.path(),
    ]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains(bad.path()), "names the file: {err}");
}

#[test]
fn metrics_are_guarded_only_with_auth_metrics() {
    let file = UsersFile::new("metrics", &users_toml(USERS, ROLES));
    let n = node_with(&file, &["--auth-metrics"]);
    let r = n.get("/metrics");
    assert_eq!(r.status, 403, "{}", r.body);
    let t = token(&n, "reader", "reader-pw");
    let r = n.get(&format!("/metrics?accessToken={t}"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("registry_auth_refusals_total"),
        "{}",
        r.body
    );
    assert_eq!(n.get("/nacos/v1/console/health/readiness").status, 200);
}

#[test]
fn failed_logins_are_limited_per_source_address() {
    let file = UsersFile::new("limit", &users_toml(USERS, ROLES));
    let n = node_with(&file, &[]);
    let mut statuses = Vec::new();
    // Each a new wrong password: a repeated one is answered from the
    // cache of bad passwords, without bcrypt, and does not count.
    for i in 0..12 {
        statuses.push(login(&n, "nacos", &format!("wrong-{i}")).status);
    }
    assert_eq!(&statuses[..10], &[403; 10], "{statuses:?}");
    assert_eq!(&statuses[10..], &[429, 429], "{statuses:?}");
    // While limited, even the right password waits out the window; it
    // costs no bcrypt, and a token already issued keeps working.
    let r = login(&n, "nacos", "nacos-pw");
    assert_eq!(r.status, 429, "{}", r.body);
    let r = register_q(&n, "svc", "10.0.0.1", "&username=nacos&password=nacos-pw");
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(refusals(&n, "rate_limited") >= 3.0);
}

#[test]
fn with_auth_off_login_answers_and_nothing_is_checked() {
    let n = Node::start(&[]);
    let r = login(&n, "nacos", "whatever");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["accessToken"], "");
    assert_eq!(register_q(&n, "svc", "10.0.0.1", "").status, 200);
    assert_eq!(
        register_q(&n, "svc", "10.0.0.2", "&accessToken=anything").status,
        200
    );
    assert_eq!(hosts(&list_q(&n, "svc", "")), ["10.0.0.1", "10.0.0.2"]);
}

/// Three clustered nodes with `--auth`, the same secret and users file.
/// The sockets holding the members' ports come back with them.
fn auth_cluster(file: &UsersFile) -> (Vec<String>, Vec<Node>, Vec<socket2::Socket>) {
    let held = reserved_ports(3);
    let addrs: Vec<String> = held
        .iter()
        .map(|p| format!("127.0.0.1:{}", port_of(p)))
        .collect();
    let nodes = addrs
        .iter()
        .map(|a| {
            let mut args: Vec<String> = [
                "--bind",
                a,
                "--peers",
                &addrs.join(","),
                "--cluster-token",
                "auth-cluster-token",
                "--grpc-port",
                "0",
                "--report-interval-ms",
                "300",
                "--cores",
                "2",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(file.flags());
            Node::start_raw(&args)
        })
        .collect();
    (addrs, nodes, held)
}

#[test]
fn a_token_from_one_node_is_accepted_by_every_node_of_a_cluster() {
    let file = UsersFile::new("cluster", &users_toml(USERS, ROLES));
    let (addrs, nodes, _held) = auth_cluster(&file);
    let admin = format!("&accessToken={}", token(&nodes[0], "nacos", "nacos-pw"));
    let reader = format!("&accessToken={}", token(&nodes[2], "reader", "reader-pw"));
    for (i, n) in nodes.iter().enumerate() {
        assert!(
            eventually(Duration::from_secs(15), || {
                let r = n.get(&format!("/nacos/v1/core/cluster/nodes?x=1{admin}"));
                r.status == 200
                    && r.json()["data"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|m| m["state"] == "UP")
                        .count()
                        == 3
            }),
            "node {i} never saw 3 members UP"
        );
    }
    let mut sorted = addrs.clone();
    sorted.sort();
    // Registered through each node with node 0's token, also through the
    // nodes that do not own the service (forwarded, authorized once).
    // Which node owns a service depends on the members' ports, so the node
    // each register goes through is chosen from the owner: the first four
    // through a non-owner (each of the two others in turn), the last two
    // through the owner.
    for k in 0..6 {
        let svc = format!("svc-{k}");
        let owner = &sorted[owner_index(&format!("DEFAULT_GROUP@@{svc}"), 3)];
        let owner_at = addrs.iter().position(|a| a == owner).unwrap();
        let via = if k < 4 {
            (owner_at + 1 + k % 2) % 3
        } else {
            owner_at
        };
        let r = register_q(&nodes[via], &svc, "10.0.0.1", &admin);
        assert_eq!(r.status, 200, "{svc} via node {via}: {}", r.body);
    }
    for k in 0..6 {
        let svc = format!("svc-{k}");
        for (i, n) in nodes.iter().enumerate() {
            assert!(
                eventually(Duration::from_secs(5), || {
                    let r = list_q(n, &svc, &reader);
                    r.status == 200 && hosts(&r) == ["10.0.0.1"]
                }),
                "{svc} listed on node {i} with node 2's reader token"
            );
        }
    }
    // The reader is refused by the node that received the write, whichever
    // owns the service; nothing changes anywhere.
    for (i, n) in nodes.iter().enumerate() {
        let r = register_q(n, "svc-0", "10.0.0.9", &reader);
        assert_eq!(r.status, 403, "node {i}: {}", r.body);
        assert!(
            r.body.contains("public:DEFAULT_GROUP:naming/svc-0"),
            "{}",
            r.body
        );
    }
    std::thread::sleep(Duration::from_millis(600));
    for n in &nodes {
        assert_eq!(hosts(&list_q(n, "svc-0", &admin)), ["10.0.0.1"]);
    }
    // Peer endpoints still want the cluster token, not a user's.
    let r = nodes[0].get(&format!("/nacos/v1/ns/distro/datums?x=1{admin}"));
    assert_eq!(r.status, 403, "{}", r.body);
}
