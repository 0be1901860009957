use ipc_macros::Message;
use serde::{Deserialize, Serialize};

#[derive(Message, Serialize, Deserialize)]
#[message(version = "3")]
struct Quoted {
    a: u32,
}

#[derive(Message, Serialize, Deserialize)]
#[message(version = -1)]
struct Negative {
    a: u32,
}

#[derive(Message, Serialize, Deserialize)]
#[message(version = 4294967296)]
struct TooLarge {
    a: u32,
}

#[derive(Message, Serialize, Deserialize)]
#[message(version = 1.5)]
struct Float {
    a: u32,
}

fn main() {}
