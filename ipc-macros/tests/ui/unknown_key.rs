use ipc_macros::Message;
use serde::{Deserialize, Serialize};

#[derive(Message, Serialize, Deserialize)]
#[message(nmae = "typo.Name")]
struct Typo {
    a: u32,
}

#[derive(Message, Serialize, Deserialize)]
#[message(rename::all = "x")]
struct PathKey {
    a: u32,
}

fn main() {}
