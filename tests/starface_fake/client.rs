//! The client side the directory tests share: the number plan the fixtures
//! are written for, the directory they must come out as, and a REST client
//! for the fake PBX.

use std::net::SocketAddr;
use std::time::Duration;

use callrec::policy::{Directory, NumberPlan, PbxClient};

use super::{testdata, LOGIN_ID};

pub fn plan() -> NumberPlan {
    NumberPlan {
        country_code: "49".into(),
        area_code: "30".into(),
        exit_code: "0".into(),
        ..NumberPlan::default()
    }
}

pub fn fixture_directory() -> Directory {
    Directory::load_file(&testdata().join("directory.toml"), plan()).unwrap()
}

pub fn client(addr: SocketAddr, password: &str) -> PbxClient {
    PbxClient::new(
        &format!("http://{addr}/rest"),
        LOGIN_ID,
        password,
        false,
        Duration::from_secs(5),
    )
    .unwrap()
}
