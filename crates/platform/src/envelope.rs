//! A contract payload ([`contract::events`]) inside the bus's envelope ([`Event`]).
//!
//! The payload is the contract's; the envelope's id (what the bus de-duplicates on), its time and
//! the trace id of the request that caused it are the runtime's, so the wrapping lives here.

use contract::events::ContractEvent;

use crate::bus::Event;

/// Wraps a contract payload in a fresh envelope: `payload.to_event()`.
pub trait ToEvent {
    fn to_event(&self) -> Event;
}

impl<E: ContractEvent> ToEvent for E {
    fn to_event(&self) -> Event {
        Event::new(E::KIND, serde_json::to_value(self).expect("contract events serialize"))
    }
}
