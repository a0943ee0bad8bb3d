//! The stand-in Bot API for the tests (`mycelium::telegram::standin`), failing the test
//! where it would return an error.

pub use mycelium::telegram::standin::Sent;
use std::time::Duration;

pub struct FakeBot(mycelium::telegram::standin::StandIn);

impl std::ops::Deref for FakeBot {
    type Target = mycelium::telegram::standin::StandIn;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

#[allow(dead_code)]
impl FakeBot {
    pub fn start(token: &str) -> FakeBot {
        FakeBot(mycelium::telegram::standin::StandIn::start(token).unwrap())
    }

    pub fn wait_sent(&self, what: &str, timeout: Duration, pred: impl Fn(&Sent) -> bool) -> Sent {
        self.0
            .wait_sent(what, timeout, pred)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn wait_n(
        &self,
        what: &str,
        timeout: Duration,
        n: usize,
        pred: impl Fn(&Sent) -> bool,
    ) -> Vec<Sent> {
        self.0
            .wait_n(what, timeout, n, pred)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}
