use ipc_macros::Message;
use serde::{Deserialize, Serialize};

#[derive(Message, Serialize, Deserialize)]
#[message(name = "")]
struct Empty {
    a: u32,
}

#[derive(Message, Serialize, Deserialize)]
#[message(name = "   ")]
struct Blank {
    a: u32,
}

fn main() {}
