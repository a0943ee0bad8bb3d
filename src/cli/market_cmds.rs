use crate::adu::MarketAdu;
use serde_json::Value;
pub fn adu_json(_m: &MarketAdu) -> Value { Value::Null }
pub fn adu_text(_m: &MarketAdu) -> String { String::new() }
