use ipc_macros::Message;

#[derive(Message)]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
