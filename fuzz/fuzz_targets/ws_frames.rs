//! The kubelet's WebSocket channel protocols (`unitlet::kubelet::ws`) from a
//! hostile client: whatever arrives on the wire (frames built from the
//! input, masked or not, with any opcode and reserved bits; well-formed
//! channel messages and v5 close signals; raw bytes), served by
//! [`channels`] over an in-memory duplex on a current-thread runtime with a
//! paused clock. Once the client hangs up, the connection ends and
//! [`ChannelConn::close`] returns (re-raising a panic of the connection's
//! task), every channel reader reaches its end, readers never get more bytes
//! than the client sent, and the server's own output is well-formed
//! WebSocket frames.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use unitlet::kubelet::ws::{
    channels, exec_layout, port_forward_layout, ChannelConn, Config, Framing, Protocol,
    CLOSE_SIGNAL, EXEC_PROTOCOLS,
};

/// Virtual time (the clock is paused and jumps ahead whenever every task
/// waits) after which a wait counts as a hang.
const HANG: Duration = Duration::from_secs(3600);

#[derive(Arbitrary, Debug)]
struct Input {
    /// Index into `EXEC_PROTOCOLS`, which holds every protocol the module
    /// serves.
    protocol: u8,
    layout: Layout,
    /// 0: the default (32 MiB).
    max_message: u16,
    idle: Option<u8>,
    /// Send the kubelet's opening messages.
    ready: bool,
    /// 16 times this many bytes (at most 32 messages' worth) go out on each
    /// writable channel.
    write: u8,
    wire: Vec<Chunk>,
}

#[derive(Arbitrary, Debug)]
enum Layout {
    Exec {
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    /// Up to 7 ports (channels past the layout are covered by messages to
    /// any channel number).
    PortForward(u8),
}

#[derive(Arbitrary, Debug)]
enum Chunk {
    /// One frame: `head` is FIN, RSV1-3 and the opcode as sent; the length
    /// is the payload's; masked with `mask` when given (a client must mask).
    Frame {
        head: u8,
        mask: Option<[u8; 4]>,
        payload: Vec<u8>,
    },
    /// A complete, masked channel message in the protocol's framing.
    Message {
        channel: u8,
        data: Vec<u8>,
    },
    /// A v5 close signal (a malformed one when `extra` is not empty).
    CloseSignal {
        channel: u8,
        extra: Vec<u8>,
    },
    Raw(Vec<u8>),
    Yield,
    Sleep(u8),
}

fuzz_target!(|input: Input| run(input));

fn frame(out: &mut Vec<u8>, head: u8, mask: Option<[u8; 4]>, payload: &[u8]) {
    out.push(head);
    let masked = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(masked | n as u8),
        n @ 126..=0xffff => {
            out.push(masked | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(masked | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        }
        None => out.extend_from_slice(payload),
    }
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(c.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(c.get(2).copied().unwrap_or(0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            s.push(if i <= c.len() {
                char::from(A[((n >> shift) & 63) as usize])
            } else {
                '='
            });
        }
    }
    s
}

enum Step {
    Bytes(Vec<u8>),
    Yield,
    Sleep(Duration),
}

/// How long the client's own pauses take, which a wait for the client
/// must allow on top of [`HANG`].
fn slept(steps: &[Step]) -> Duration {
    steps
        .iter()
        .map(|s| match s {
            Step::Sleep(d) => *d,
            _ => Duration::ZERO,
        })
        .sum()
}

const MASK: Option<[u8; 4]> = Some([0x12, 0x34, 0x56, 0x78]);

fn steps(wire: Vec<Chunk>, framing: Framing) -> (Vec<Step>, usize) {
    let mut out = Vec::new();
    let mut sent = 0;
    for chunk in wire {
        let mut bytes = Vec::new();
        match chunk {
            Chunk::Frame {
                head,
                mask,
                payload,
            } => {
                sent += payload.len();
                frame(&mut bytes, head, mask, &payload);
            }
            Chunk::Message { channel, data } => {
                sent += data.len();
                match framing {
                    Framing::Binary => {
                        let mut msg = vec![channel];
                        msg.extend_from_slice(&data);
                        frame(&mut bytes, 0x82, MASK, &msg);
                    }
                    Framing::Base64 => {
                        let mut msg = String::new();
                        msg.push(char::from(b'0'.wrapping_add(channel)));
                        msg.push_str(&base64(&data));
                        frame(&mut bytes, 0x81, MASK, msg.as_bytes());
                    }
                }
            }
            Chunk::CloseSignal { channel, extra } => {
                let mut msg = vec![CLOSE_SIGNAL, channel];
                msg.extend_from_slice(&extra);
                frame(&mut bytes, 0x82, MASK, &msg);
            }
            Chunk::Raw(raw) => {
                sent += raw.len();
                bytes = raw;
            }
            Chunk::Yield => {
                out.push(Step::Yield);
                continue;
            }
            Chunk::Sleep(s) => {
                out.push(Step::Sleep(Duration::from_secs(s.into())));
                continue;
            }
        }
        out.push(Step::Bytes(bytes));
    }
    (out, sent)
}

/// Checks that `buf` is a sequence of complete, unmasked server frames with
/// known opcodes, and returns how many there were.
fn server_frames(buf: &[u8]) -> usize {
    let mut rest = buf;
    let mut count = 0;
    let mut closed = false;
    while !rest.is_empty() {
        assert!(!closed, "the server sent a frame after its close frame");
        assert!(rest.len() >= 2, "partial frame header at the end");
        let (b0, b1) = (rest[0], rest[1]);
        assert_eq!(b0 & 0x70, 0, "reserved bits set: {b0:#04x}");
        let opcode = b0 & 0x0f;
        assert!(
            matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10),
            "unknown opcode {opcode}"
        );
        assert_eq!(b1 & 0x80, 0, "the server masked a frame");
        let (len, head) = match b1 & 0x7f {
            126 => {
                assert!(rest.len() >= 4, "partial frame header at the end");
                (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4)
            }
            127 => {
                assert!(rest.len() >= 10, "partial frame header at the end");
                let mut n = [0u8; 8];
                n.copy_from_slice(&rest[2..10]);
                (usize::try_from(u64::from_be_bytes(n)).unwrap(), 10)
            }
            n => (usize::from(n), 2),
        };
        if opcode >= 8 {
            assert!(b0 & 0x80 != 0 && len <= 125, "bad control frame");
        }
        assert!(rest.len() >= head + len, "partial frame at the end");
        closed = opcode == 8;
        rest = &rest[head + len..];
        count += 1;
    }
    count
}

fn run(input: Input) {
    let name = EXEC_PROTOCOLS[usize::from(input.protocol) % EXEC_PROTOCOLS.len()];
    let protocol = Protocol::from_name(name).expect("every listed protocol is served");
    let layout = match input.layout {
        Layout::Exec {
            stdin,
            stdout,
            stderr,
        } => exec_layout(stdin, stdout, stderr).to_vec(),
        Layout::PortForward(n) => port_forward_layout(usize::from(n % 8)),
    };
    let ports = match input.layout {
        Layout::PortForward(n) => usize::from(n % 8),
        Layout::Exec { .. } => 0,
    };
    let cfg = Config {
        max_message_size: match input.max_message {
            0 => Config::default().max_message_size,
            n => n.into(),
        },
        idle_timeout: input.idle.map(|s| Duration::from_secs(s.into())),
        ..Config::default()
    };
    let (steps, sent) = steps(input.wire, protocol.framing);
    let slept = slept(&steps);
    let ready = input.ready;
    // At most a few dozen messages per writer, however small they must be.
    let write = (usize::from(input.write) * 16).min(32 * cfg.max_message_size);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let mut conn: ChannelConn = channels(server_io, protocol, &layout, cfg).await;

        let mut readers = Vec::new();
        let mut writers = Vec::new();
        for channel in 0..=u8::MAX {
            if let Some(mut r) = conn.reader(channel) {
                readers.push(tokio::spawn(async move {
                    let mut total = 0usize;
                    let mut buf = vec![0u8; 8192];
                    while let Ok(n @ 1..) = r.read(&mut buf).await {
                        total += n;
                    }
                    total
                }));
            }
            if let Some(mut w) = conn.writer(channel) {
                writers.push(tokio::spawn(async move {
                    let chunk = [b'x'; 4096];
                    let mut left = write;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if w.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                    let _ = w.shutdown().await;
                }));
            }
        }

        let (mut client_rd, mut client_wr) = tokio::io::split(client_io);
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut chunk = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = client_rd.read(&mut chunk).await {
                out.extend_from_slice(&chunk[..n]);
            }
            server_frames(&out)
        });

        if ready {
            let opening = async {
                if ports > 0 {
                    let ports: Vec<u16> = (0..ports as u16).map(|p| 8000 + p).collect();
                    conn.send_port_prefixes(&ports).await
                } else {
                    conn.send_exec_ready().await
                }
            };
            // Fails once the connection has ended, which the client may
            // have caused already.
            let _ = timeout(HANG, opening)
                .await
                .expect("sending the opening messages hung");
        }

        let writing = async {
            for step in steps {
                match step {
                    Step::Bytes(b) => {
                        if client_wr.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    Step::Yield => tokio::task::yield_now().await,
                    Step::Sleep(d) => tokio::time::sleep(d).await,
                }
            }
            let _ = client_wr.shutdown().await;
        };
        timeout(HANG + slept, writing)
            .await
            .expect("the server stopped reading the client");

        timeout(HANG, conn.closed())
            .await
            .expect("the connection outlived the client's hang-up");
        timeout(HANG, conn.close())
            .await
            .expect("close hung after the connection ended");

        let mut read = 0;
        for r in readers {
            read += timeout(HANG, r)
                .await
                .expect("a channel reader never saw its end")
                .expect("a channel reader panicked");
        }
        assert!(
            read <= sent,
            "readers got {read} bytes, the client sent {sent}"
        );
        for w in writers {
            timeout(HANG, w)
                .await
                .expect("a channel writer hung after the connection ended")
                .expect("a channel writer panicked");
        }
        drop(client_wr);
        timeout(HANG, reader)
            .await
            .expect("the server never let go of the transport")
            .expect("the server's output is not well-formed WebSocket");
    });
}
