use ipc_macros::Message;
use serde::{Deserialize, Serialize};

#[derive(Message, Serialize, Deserialize)]
#[message(name = "a.One", name = "a.Two")]
struct SameAttribute {
    a: u32,
}

#[derive(Message, Serialize, Deserialize)]
#[message(version = 1)]
#[message(version = 2)]
struct TwoAttributes {
    a: u32,
}

fn main() {}
