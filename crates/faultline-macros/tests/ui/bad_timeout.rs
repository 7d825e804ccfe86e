#[derive(faultline_macros::JobArgs)]
#[job(kind = "email.send", timeout = "30 parsecs")]
struct SendEmail;

fn main() {}
