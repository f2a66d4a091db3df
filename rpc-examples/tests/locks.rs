//! The example services keep their wire format: each is checked against the lock file written
//! when it was last changed on purpose (`rpc-examples/locks/`). A change that would break their
//! clients fails here, naming the method and the change.

use rpc_cli::lockfile::assert_compatible;
use rpc_examples::expr::EvaluatorClient;
use rpc_examples::primes::PrimeWorkerClient;
use rpc_examples::streams::{ChatRoomClient, FileStoreClient, LogTailClient};
use rpc_examples::{CalcClient, GreeterClient};

fn lock(name: &str) -> String {
    format!("{}/locks/{name}.lock.json", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_example_service_is_compatible_with_its_lock_file() {
    assert_compatible::<GreeterClient>(lock("greeter"));
    assert_compatible::<CalcClient>(lock("calc"));
    assert_compatible::<PrimeWorkerClient>(lock("prime_worker"));
    assert_compatible::<LogTailClient>(lock("log_tail"));
    assert_compatible::<FileStoreClient>(lock("file_store"));
    assert_compatible::<ChatRoomClient>(lock("chat_room"));
    assert_compatible::<EvaluatorClient>(lock("evaluator"));
}
