#[derive(faultline_macros::JobArgs)]
#[job(kind = "email.send", max_attempts = 0)]
struct SendEmail;

fn main() {}
