//! `--auth` fixtures: a secret, a users file with bcrypt hashes made by
//! the binary's own `hash-password`, and logins.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{urlencode, Node};

/// Base64 of 32 bytes.
pub const SECRET: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The bcrypt hash `distro-registry hash-password` prints for `password`.
pub fn hash(password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_distro-registry"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hash-password");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(h.starts_with("$2"), "not a bcrypt hash: {h}");
    h
}

/// `users`: (name, password, roles); `roles`: (name, [(resource, action)]).
pub fn users_toml(users: &[(&str, &str, &[&str])], roles: &[(&str, &[(&str, &str)])]) -> String {
    let mut t = String::new();
    for (name, pw, rs) in users {
        let rs: Vec<String> = rs.iter().map(|r| format!("{r:?}")).collect();
        t.push_str(&format!(
            "[[users]]\nusername = {name:?}\npassword_hash = {:?}\nroles = [{}]\n\n",
            hash(pw),
            rs.join(", ")
        ));
    }
    for (name, perms) in roles {
        let ps: Vec<String> = perms
            .iter()
            .map(|(res, act)| format!("{{ resource = {res:?}, action = {act:?} }}"))
            .collect();
        t.push_str(&format!(
            "[[roles]]\nname = {name:?}\npermissions = [{}]\n\n",
            ps.join(", ")
        ));
    }
    t
}

/// A users file under the temp dir, removed when dropped.
pub struct UsersFile(pub PathBuf);

impl UsersFile {
    pub fn new(tag: &str, toml: &str) -> UsersFile {
        let p = std::env::temp_dir().join(format!("dr-users-{tag}-{}.toml", std::process::id()));
        std::fs::write(&p, toml).unwrap();
        UsersFile(p)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    pub fn write(&self, toml: &str) {
        // Written beside and renamed, so that a reload never reads half.
        let tmp = self.0.with_extension("new");
        std::fs::write(&tmp, toml).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }

    /// The flags of a node that uses this file.
    pub fn flags(&self) -> Vec<String> {
        [
            "--auth",
            "--auth-secret",
            SECRET,
            "--auth-users",
            self.path(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

impl Drop for UsersFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `POST /nacos/v1/auth/login`: (status, body).
pub fn login(n: &Node, user: &str, password: &str) -> super::Resp {
    n.req(
        "POST",
        "/nacos/v1/auth/login",
        &format!(
            "username={}&password={}",
            urlencode(user),
            urlencode(password)
        ),
    )
}

/// The access token of a login that must succeed.
pub fn token(n: &Node, user: &str, password: &str) -> String {
    let r = login(n, user, password);
    assert_eq!(r.status, 200, "login {user}: {}", r.body);
    r.json()["accessToken"].as_str().unwrap().to_string()
}
