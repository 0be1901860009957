use ipc_macros::Message;
use serde::{Deserialize, Serialize};

#[derive(Message, Serialize, Deserialize)]
#[message(name = 5)]
struct Number {
    a: u32,
}

#[derive(Message, Serialize, Deserialize)]
#[message(name = Ident)]
struct Bare {
    a: u32,
}

fn main() {}
