use ipc_macros::Message;
use serde::{Deserialize, Serialize};

#[derive(Message, Serialize, Deserialize)]
#[message(crate = shmlink)]
struct NotAString {
    a: u32,
}

#[derive(Message, Serialize, Deserialize)]
#[message(crate = "not a path")]
struct NotAPath {
    a: u32,
}

fn main() {}
