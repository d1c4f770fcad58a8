//! A real `redis-server` for the tests (Debian's package, installed by the test command): one
//! per test, on a free loopback port, without persistence, stopped when dropped. `stop` and
//! `start` again on the same port stand in for an outage.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
    /// TLS only (`--port 0 --tls-port`), with an ACL user and client certificates required.
    tls: Option<Tls>,
}

struct Tls {
    ca: String,
    cert: String,
    key: String,
    user: String,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(None)
    }

    /// With `requirepass`.
    pub fn start_with(password: Option<&str>) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = Redis { child: None, port, password: password.map(String::from), tls: None };
        r.resume();
        r
    }

    /// Over TLS only, as managed Redis services run: the server certificate from `pki`, a
    /// client certificate signed by its CA required, and one ACL user (`default` off).
    pub fn start_tls(pki: &super::Pki, user: &str, password: &str) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let path = |p: &std::path::Path| p.display().to_string();
        let tls = Tls { ca: path(&pki.ca), cert: path(&pki.cert), key: path(&pki.key), user: user.into() };
        let mut r = Redis { child: None, port, password: Some(password.into()), tls: Some(tls) };
        r.resume();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Start (again) on the same port, and wait until it answers.
    pub fn resume(&mut self) {
        if self.tls.is_some() {
            return self.resume_tls();
        }
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    fn resume_tls(&mut self) {
        let tls = self.tls.as_ref().expect("a TLS Redis");
        let port = self.port.to_string();
        let pass = self.password.clone().unwrap_or_default();
        // Each word of the ACL rule its own argument: redis-server quotes an argument with spaces.
        let secret = format!(">{pass}");
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-cert-file", &tls.cert, "--tls-key-file", &tls.key, "--tls-ca-cert-file", &tls.ca])
            .args(["--tls-auth-clients", "yes", "--user", "default", "off", "--user", &tls.user])
            .args(["on", &secret, "~*", "&*", "+@all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut up = false;
        while Instant::now() < deadline && !up {
            let ping = Command::new("redis-cli")
                .args(["--tls", "--cacert", &tls.ca, "--cert", &tls.cert, "--key", &tls.key])
                .args([
                    "-h",
                    "localhost",
                    "-p",
                    &port,
                    "--user",
                    &tls.user,
                    "--pass",
                    &pass,
                    "--no-auth-warning",
                    "PING",
                ])
                .output();
            up = ping.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"));
            if !up {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.child = Some(child);
        assert!(up, "redis-server with TLS did not start on port {}", self.port);
    }

    /// Stop it (an outage): connections are refused until `resume`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
