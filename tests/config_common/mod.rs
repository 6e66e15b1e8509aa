//! Helpers shared by the config test files (tests/config.rs,
//! tests/config_errors.rs, tests/config_go_schema.rs): parsing text as
//! /etc/litefs/litefs.yml, expecting a refusal, and checking its message.
#![allow(dead_code)]

use std::path::Path;

use litefs::config::{self, Config, Error};

pub fn src() -> &'static Path {
    Path::new("/etc/litefs/litefs.yml")
}

pub fn parse(text: &str) -> Config {
    match config::parse(text, src()) {
        Ok(config) => config,
        Err(e) => panic!("config should parse, got: {e}\n---\n{text}"),
    }
}

/// Parses text that must be refused; returns the error and its message.
pub fn refuse(text: &str) -> (Error, String) {
    match config::parse(text, src()) {
        Ok(config) => panic!("config should be refused, got {config:?}\n---\n{text}"),
        Err(e) => {
            let message = e.to_string();
            (e, message)
        }
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// Asserts that `message` names the file and contains every piece.
pub fn assert_mentions(message: &str, pieces: &[&str]) {
    assert!(
        message.contains("/etc/litefs/litefs.yml"),
        "message does not name the file: {message}"
    );
    for piece in pieces {
        assert!(
            message.contains(piece),
            "message does not mention {piece:?}: {message}"
        );
    }
}
