#[derive(faultline_macros::JobArgs)]
#[job(queue = "mail")]
struct SendEmail;

fn main() {}
