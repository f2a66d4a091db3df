//! Types of the crates programs carry most. chrono's dates and times travel as text, parsed
//! from the string they read, and uuid's ids as 16 bytes (postcard is not human-readable):
//! each refuses the made-up `""` and `"a"`, yet their schemas are made (tracing offers them
//! common texts and byte lengths) and calls carry them.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use rpc_core::ServiceClient;
use rpc_core::schema::{Schema, TypeDef};
use rpc_tests::{serve_on_loopback, within};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Booking {
    pub at: DateTime<Utc>,
    pub local: NaiveDateTime,
    pub day: NaiveDate,
    pub time: NaiveTime,
    pub id: Uuid,
    pub guests: Vec<Uuid>,
    pub arrivals: BTreeMap<Uuid, DateTime<Utc>>,
    pub note: Option<String>,
}

#[rpc_core::service]
pub trait Bookings {
    /// Keeps a booking, and gives it back.
    async fn book(&self, booking: Booking) -> Booking;
}

struct Desk;

impl Bookings for Desk {
    async fn book(&self, booking: Booking) -> Booking {
        booking
    }
}

#[test]
fn dates_times_and_uuids_are_described_as_they_travel() {
    let schema = BookingsClient::INFO
        .describe()
        .expect("chrono's and uuid's types are described");
    let TypeDef::Struct(fields) = &schema.types["Booking"] else {
        panic!("a struct: {:?}", schema.types["Booking"]);
    };
    let kinds: Vec<_> = fields
        .iter()
        .map(|field| (field.name.as_str(), field.schema.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("at", Schema::Str),
            ("local", Schema::Str),
            ("day", Schema::Str),
            ("time", Schema::Str),
            ("id", Schema::Bytes),
            ("guests", Schema::Seq(Box::new(Schema::Bytes))),
            (
                "arrivals",
                Schema::Map(Box::new(Schema::Bytes), Box::new(Schema::Str))
            ),
            ("note", Schema::Option(Box::new(Schema::Str))),
        ]
    );
}

#[tokio::test]
async fn dates_times_and_uuids_travel_in_calls() {
    within("a booking's call", async {
        let addr = serve_on_loopback(rpc_core::Server::builder(), BookingsServer::new(Desk)).await;
        let client = BookingsClient::connect(addr).await.expect("connects");
        let day = NaiveDate::from_ymd_opt(2026, 12, 5).expect("a date");
        let time = NaiveTime::from_hms_milli_opt(4, 5, 6, 789).expect("a time");
        let booking = Booking {
            at: DateTime::from_timestamp(1_796_000_000, 123).expect("a time"),
            local: day.and_time(time),
            day,
            time,
            id: Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0),
            guests: vec![Uuid::nil(), Uuid::max()],
            arrivals: BTreeMap::from([
                (Uuid::nil(), DateTime::UNIX_EPOCH),
                (Uuid::max(), DateTime::from_timestamp(1, 0).expect("a time")),
            ]),
            note: Some("window seat".to_owned()),
        };
        let kept = client.book(booking.clone()).await.expect("booked");
        assert_eq!(kept, booking);
    })
    .await;
}
