//! `sotto`: the command-line client. Every command has a `--json` form (one object, or
//! one object per line for streams, and nothing else on stdout) so scripts and bots can
//! drive it. All the work is in the `sotto-client` SDK.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use sotto_client::{
    Client, ClientError, DeviceId, Event, LinkCode, MessageId, StoredMessage, Username,
};

const EXIT_CODES: &str = "Exit codes:
  0  success
  1  failure (network, server, local storage)
  2  bad usage (unknown command, missing or invalid argument)
  3  not found (unknown user, conversation or message)
  4  safety number mismatch (`verify`)
  5  refused for security (identity key changed, uncertified device, a device list
     this device did not sign, a wrong recovery key)
  6  busy: the conversation kept changing while retrying; nothing was changed, try again
  7  the recipient's safety number changed: nothing was sent; compare the new number
     (`sotto safety-number USER`), then accept it with `sotto trust USER`
  8  the recipient has no current device to receive it (account reset or all devices
     removed): nothing was sent";

#[derive(Parser, Debug)]
#[command(
    name = "sotto",
    version,
    about = "Sotto: end-to-end encrypted messaging from the command line",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Profile directory (one account and device per directory).
    #[arg(long, env = "SOTTO_HOME", global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Server URL (used when registering; a profile remembers its server).
    #[arg(
        long,
        env = "SOTTO_SERVER",
        global = true,
        default_value = "http://127.0.0.1:7480"
    )]
    server: String,
    /// Also trust this CA certificate (PEM), for a server with a private or
    /// self-signed certificate.
    #[arg(long, env = "SOTTO_CA_CERT", global = true, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Print JSON (one object per line for streams) and nothing else on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create an account with this device as its primary device. Prints the
    /// recovery key once: write it down and keep it offline; it is the only way to
    /// get the account back if this device is lost.
    Register {
        /// 3-32 characters of a-z, 0-9, '.', '_' or '-'.
        #[arg(value_parser = parse_username)]
        username: Username,
        /// A name for this device, shown to your contacts ("phone", "laptop").
        #[arg(long, default_value = "primary", value_name = "NAME")]
        device_name: String,
    },
    /// Restore your account on this (new, empty) profile with its recovery key, after
    /// losing your primary device. Every old device is removed; your contacts keep
    /// your safety number, and your conversations get this device.
    Recover {
        /// Your username.
        #[arg(value_parser = parse_username)]
        username: Username,
        /// A name for this device.
        #[arg(long, default_value = "primary", value_name = "NAME")]
        device_name: String,
        /// Read the recovery key from this file instead of the terminal (or set
        /// SOTTO_RECOVERY_KEY).
        #[arg(long, value_name = "FILE")]
        recovery_key_file: Option<PathBuf>,
    },
    /// Accept a contact's new identity key after their safety number changed
    /// (compare `sotto safety-number USER` with them first). Resets their
    /// verification; your conversations with them get their new devices.
    Trust {
        /// The contact.
        #[arg(value_parser = parse_username)]
        username: Username,
    },
    /// Show this profile's username, device id and safety fingerprint.
    Whoami,
    /// Link this (new, empty) profile to an existing account, or approve a new device.
    #[command(subcommand)]
    Link(LinkCommand),
    /// List this account's devices, or remove one.
    Devices {
        #[command(subcommand)]
        command: Option<DevicesCommand>,
    },
    /// Send a message to a user (1:1, created on first use) or a conversation.
    Send {
        /// A username, a group's name, or a conversation id (or its first digits).
        target: String,
        /// The text (the caption, with --file).
        #[arg(required_unless_present = "file")]
        text: Option<String>,
        /// Send this file as an encrypted attachment.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// Process everything pending and print new messages (attachments are downloaded,
    /// verified and decrypted).
    Receive {
        /// Keep listening for new messages.
        #[arg(long)]
        follow: bool,
        /// Where to save attachments [default: the profile's attachments folder].
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
    },
    /// List conversations.
    Conversations,
    /// Show a conversation's stored messages, oldest first.
    History {
        /// A username, a group's name, or a conversation id (or its first digits).
        conversation: String,
    },
    /// Group conversations.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Print the safety number with a user (compare it in person or on a call).
    SafetyNumber {
        /// The other user.
        #[arg(value_parser = parse_username)]
        username: Username,
    },
    /// Mark a user verified if the safety number matches.
    Verify {
        /// The other user.
        #[arg(value_parser = parse_username)]
        username: Username,
        /// The 60 digits (spaces allowed).
        number: String,
    },
    /// React to a message with an emoji.
    React {
        /// A username, a group's name, or a conversation id (or its first digits).
        conversation: String,
        /// The message id.
        message: MessageId,
        /// The emoji.
        emoji: String,
        /// Take the reaction back.
        #[arg(long)]
        remove: bool,
    },
    /// Edit one of your messages.
    Edit {
        /// A username, a group's name, or a conversation id (or its first digits).
        conversation: String,
        /// The message id.
        message: MessageId,
        /// The new text.
        text: String,
    },
    /// Delete one of your messages for everyone.
    Delete {
        /// A username, a group's name, or a conversation id (or its first digits).
        conversation: String,
        /// The message id.
        message: MessageId,
    },
    /// Set a conversation's disappearing-messages timer (e.g. 30s, 5m, 1h, 7d) or `off`.
    Disappearing {
        /// A username, a group's name, or a conversation id (or its first digits).
        conversation: String,
        /// A duration or `off`.
        #[arg(value_parser = parse_timer)]
        duration: Timer,
    },
}

#[derive(Subcommand, Debug)]
enum LinkCommand {
    /// On the new device (a fresh --home): print a one-time link code, wait for
    /// approval, then print this device's id.
    Start {
        /// A name for this device, shown to your contacts ("laptop").
        #[arg(long, default_value = "linked device", value_name = "NAME")]
        device_name: String,
    },
    /// On the primary device: approve the new device showing CODE.
    Approve {
        /// The code `sotto link start` printed (it may start with '-').
        #[arg(allow_hyphen_values = true)]
        code: LinkCode,
    },
}

#[derive(Subcommand, Debug)]
enum DevicesCommand {
    /// Unlink one of this account's other devices, on the primary device (its
    /// access ends at once; it is removed from every conversation).
    Remove {
        /// The device id (see `sotto devices`).
        device_id: DeviceId,
    },
    /// Replace this device's server token (a copy of this profile made before can no
    /// longer act as this device).
    RotateToken,
}

#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// Create a group.
    Create {
        /// The group's name.
        name: String,
        /// Members, comma-separated.
        #[arg(value_parser = parse_username, long, value_delimiter = ',', required = true)]
        members: Vec<Username>,
    },
    /// Add users to a group.
    Add {
        /// The group's name or id (or its first digits).
        conversation: String,
        /// Users to add.
        #[arg(value_parser = parse_username, required = true)]
        users: Vec<Username>,
    },
    /// Remove users from a group.
    Remove {
        /// The group's name or id (or its first digits).
        conversation: String,
        /// Users to remove.
        #[arg(value_parser = parse_username, required = true)]
        users: Vec<Username>,
    },
    /// List a conversation's members and their devices.
    Members {
        /// A username, a group's name, or a conversation id (or its first digits).
        conversation: String,
    },
    /// Leave a group.
    Leave {
        /// The group's name or id (or its first digits).
        conversation: String,
    },
}

/// An error and the exit code it maps to.
struct Failure {
    message: String,
    code: u8,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Ambiguous { .. }
            | ClientError::NotRegistered
            | ClientError::AlreadyRegistered(_)
            | ClientError::NotOwnMessage(_)
            | ClientError::NotAMember(_)
            | ClientError::NoAttachment(_)
            | ClientError::RemovingThisDevice
            | ClientError::UnknownDevice(_)
            | ClientError::InvalidLinkCode
            | ClientError::InvalidServer { .. }
            | ClientError::InvalidRecoveryKey(_)
            | ClientError::NotPrimary
            | ClientError::CaCertificate(_) => 2,
            ClientError::UnknownUser(_)
            | ClientError::UnknownConversation(_)
            | ClientError::UnknownMessage(_) => 3,
            ClientError::Refused(_)
            | ClientError::ForeignDeviceList { .. }
            | ClientError::WrongRecoveryKey(_) => 5,
            ClientError::Contention { .. } => 6,
            ClientError::SafetyNumberChanged(_) => 7,
            ClientError::Unreachable { .. } => 8,
            _ => 1,
        };
        // The SDK's messages name no commands; the CLI adds what to type next.
        let hint = match &e {
            ClientError::NotRegistered => ": run `sotto register USERNAME`",
            ClientError::AlreadyRegistered(_) => " (use another --home)",
            ClientError::UnknownConversation(_) => "; see `sotto conversations`",
            ClientError::UnknownDevice(_) => "; see `sotto devices`",
            ClientError::UnknownMessage(_) => "; see `sotto history CONVERSATION`",
            ClientError::CaCertificate(_) => " (check --ca-cert)",
            ClientError::SafetyNumberChanged(_) => {
                "; see `sotto safety-number USER`, then `sotto trust USER`"
            }
            ClientError::NotPrimary => "; run this on your primary device",
            ClientError::ForeignDeviceList { .. } => " (`sotto recover USERNAME`)",
            _ => "",
        };
        Self {
            message: format!("{e}{hint}"),
            code,
        }
    }
}

fn main() -> ExitCode {
    use clap::error::ErrorKind;
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        // One line, like every other error: what was wrong; `--help` shows the rest.
        Err(e) => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("sotto: {first} (see --help)");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sotto: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("sotto: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// `--home`, else the platform's data directory: `$XDG_DATA_HOME/sotto` or
/// `~/.local/share/sotto` on Linux.
fn home(cli: &Cli) -> Result<PathBuf, Failure> {
    if let Some(h) = &cli.home {
        return Ok(h.clone());
    }
    dirs::data_dir()
        .map(|d| d.join("sotto"))
        .ok_or_else(|| Failure {
            message: "no profile directory: pass --home DIR or set SOTTO_HOME".into(),
            code: 2,
        })
}

/// Prints one result: JSON, or the human line.
fn out(json_mode: bool, value: &Value, human: impl FnOnce() -> String) {
    if json_mode {
        println!("{value}");
    } else {
        println!("{}", human());
    }
}

fn message_json(m: &StoredMessage) -> Value {
    let mut v = json!({
        "id": m.id,
        "conversation": m.conversation.to_string(),
        "sender": m.sender.to_string(),
        "sender_device": m.sender_device.to_string(),
        "outgoing": m.outgoing,
        "kind": m.kind,
        "text": m.text,
        "sent_at": m.sent_at,
    });
    if m.edited_at.is_some() {
        v["edited"] = json!(true);
    }
    if m.deleted {
        v["deleted"] = json!(true);
    }
    if let Some(a) = m
        .attachment
        .as_deref()
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
    {
        let mut shown = json!({"name": a["name"], "size": a["size"], "path": a["path"]});
        if a.get("error").is_some() {
            shown["error"] = a["error"].clone();
        }
        v["attachment"] = shown;
    }
    v
}

/// What a peer wrote, made safe for one terminal line: newlines, escape sequences and
/// every other control or bidirectional-override character are shown escaped, so no
/// text can start a line that looks like another sender's, or a `SECURITY:` line, or
/// drive the terminal.
fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control()
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&c.escape_unicode().to_string());
            }
            c => out.push(c),
        }
    }
    out
}

fn message_line(m: &StoredMessage) -> String {
    let who = if m.outgoing {
        "me".to_owned()
    } else {
        m.sender.to_string()
    };
    let body = match (&m.text, m.deleted) {
        (_, true) => "(deleted)".to_owned(),
        (Some(t), false) => shown(t),
        (None, false) => format!("({} message)", shown(&m.kind)),
    };
    let body = match m
        .attachment
        .as_deref()
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
    {
        Some(a) => format!(
            "{body} [file {} ({} bytes){}]",
            shown(a["name"].as_str().unwrap_or("?")),
            a["size"],
            a["path"]
                .as_str()
                .map(|p| format!(" saved to {p}"))
                .unwrap_or_default()
        ),
        None => body,
    };
    let edited = if m.edited_at.is_some() {
        " (edited)"
    } else {
        ""
    };
    format!("[{}] {who}: {body}{edited}  ({})", m.conversation, m.id)
}

fn event_json(e: &Event) -> Option<Value> {
    Some(match e {
        Event::Message(m) => message_json(m),
        Event::Edited {
            conversation,
            id,
            text,
        } => {
            json!({"event": "edited", "conversation": conversation.to_string(), "id": id, "text": text})
        }
        Event::Deleted { conversation, id } => {
            json!({"event": "deleted", "conversation": conversation.to_string(), "id": id})
        }
        Event::Reaction {
            conversation,
            target,
            sender,
            emoji,
        } => json!({
            "event": "reaction", "conversation": conversation.to_string(), "target": target,
            "sender": sender.to_string(), "emoji": emoji,
        }),
        Event::Joined { conversation, by } => {
            json!({"event": "joined", "conversation": conversation.to_string(), "by": by.to_string()})
        }
        Event::Members {
            conversation,
            by,
            added,
            removed,
            linked,
            unlinked,
            removed_me,
        } => json!({
            "event": "members", "conversation": conversation.to_string(), "by": by.to_string(),
            "added": added.iter().map(|(u, d)| json!({"user": u.to_string(), "device": d.to_string()})).collect::<Vec<_>>(),
            "removed": removed.iter().map(|(u, d)| json!({"user": u.to_string(), "device": d.to_string()})).collect::<Vec<_>>(),
            "linked": linked.iter().map(|c| json!({"user": c.user.to_string(), "device": c.device.to_string(), "name": c.name})).collect::<Vec<_>>(),
            "unlinked": unlinked.iter().map(|c| json!({"user": c.user.to_string(), "device": c.device.to_string(), "name": c.name})).collect::<Vec<_>>(),
            "removed_me": removed_me,
        }),
        Event::Contact { user, detail } => {
            json!({"event": "contact", "user": user.to_string(), "detail": detail})
        }
        Event::GroupName {
            conversation,
            by,
            name,
        } => json!({
            "event": "group_name", "conversation": conversation.to_string(),
            "by": by.to_string(), "name": name,
        }),
        Event::Timer {
            conversation,
            seconds,
        } => {
            json!({"event": "disappearing", "conversation": conversation.to_string(), "seconds": seconds})
        }
        Event::Security {
            conversation,
            detail,
        } => json!({
            "event": "security", "conversation": conversation.map(|c| c.to_string()), "detail": detail,
        }),
        Event::Failed { seq, reason } => json!({"event": "failed", "seq": seq, "reason": reason}),
        _ => return None,
    })
}

fn event_line(e: &Event) -> Option<String> {
    Some(match e {
        Event::Message(m) => message_line(m),
        Event::Edited {
            conversation,
            id,
            text,
        } => format!("[{conversation}] edited {id}: {}", shown(text)),
        Event::Deleted { conversation, id } => format!("[{conversation}] deleted {id}"),
        Event::Reaction {
            conversation,
            target,
            sender,
            emoji: Some(e),
        } => {
            format!("[{conversation}] {sender} reacted {} to {target}", shown(e))
        }
        Event::Reaction {
            conversation,
            target,
            sender,
            emoji: None,
        } => {
            format!("[{conversation}] {sender} took back a reaction to {target}")
        }
        Event::Joined { conversation, by } => format!("[{conversation}] {by} added you"),
        Event::Members {
            conversation,
            by,
            added,
            removed,
            linked,
            unlinked,
            removed_me,
        } => {
            if *removed_me {
                format!("[{conversation}] {by} removed you")
            } else {
                members_lines(conversation, by, added, removed, linked, unlinked)
            }
        }
        Event::Contact { user: _, detail } => shown(detail),
        Event::Timer {
            conversation,
            seconds: Some(s),
        } => {
            format!("[{conversation}] messages now disappear after {s} s")
        }
        Event::Timer {
            conversation,
            seconds: None,
        } => format!("[{conversation}] disappearing messages off"),
        Event::GroupName {
            conversation,
            by,
            name,
        } => format!("[{conversation}] {by} named the group \"{}\"", shown(name)),
        Event::Security {
            conversation,
            detail,
        } => match conversation {
            Some(c) => format!("[{c}] SECURITY: {}", shown(detail)),
            None => format!("SECURITY: {}", shown(detail)),
        },
        Event::Failed { seq, reason } => {
            format!("could not process entry {seq}: {}", shown(reason))
        }
        _ => return None,
    })
}

/// A membership change in words: devices a member linked or unlinked are told as
/// such ("bob linked a new device (laptop)"), never as bob joining or leaving.
fn members_lines(
    conversation: &sotto_client::ConversationId,
    by: &Username,
    added: &[(Username, DeviceId)],
    removed: &[(Username, DeviceId)],
    linked: &[sotto_client::MemberDevice],
    unlinked: &[sotto_client::MemberDevice],
) -> String {
    let users = |l: &[(Username, DeviceId)]| {
        let mut names: Vec<String> = l.iter().map(|(u, _)| u.to_string()).collect();
        names.dedup();
        names.join(", ")
    };
    let mut lines = Vec::new();
    if !added.is_empty() {
        lines.push(format!("[{conversation}] {by} added {}", users(added)));
    }
    if !removed.is_empty() {
        lines.push(format!("[{conversation}] {by} removed {}", users(removed)));
    }
    for c in linked {
        lines.push(format!(
            "[{conversation}] {} linked a new device ({})",
            c.user,
            shown(&c.name)
        ));
    }
    for c in unlinked {
        lines.push(format!(
            "[{conversation}] {} removed a device ({})",
            c.user,
            shown(&c.name)
        ));
    }
    lines.join("\n")
}

fn print_events(json_mode: bool, events: &[Event]) {
    for e in events {
        if json_mode {
            if let Some(v) = event_json(e) {
                println!("{v}");
            }
        } else if let Some(line) = event_line(e) {
            println!("{line}");
        }
    }
}

/// A username as a person typed it (letter case aside).
fn parse_username(s: &str) -> Result<Username, String> {
    Username::parse(s).map_err(|e| format!("invalid username {s:?}: {e}"))
}

/// A disappearing-messages timer: seconds, or `None` for off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timer(Option<u32>);

/// `30s`, `5m`, `2h`, `7d`, a number of seconds, or `off`.
fn parse_timer(s: &str) -> Result<Timer, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Timer(None));
    }
    let bad = || format!("{s:?} is not a duration: use e.g. 30s, 5m, 1h, 7d or off");
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u32 = number.parse().map_err(|_| bad())?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(factor) {
        Some(0) | None => Err(bad()),
        Some(secs) => Ok(Timer(Some(secs))),
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let home = home(&cli)?;
    let ca = match &cli.ca_cert {
        Some(path) => Some(std::fs::read(path).map_err(|e| Failure {
            message: format!("cannot read the CA certificate {}: {e}", path.display()),
            code: 2,
        })?),
        None => None,
    };
    let client = Client::open_with_ca(&home, &cli.server, ca)?;
    let j = cli.json;
    match cli.command {
        Command::Register {
            username,
            device_name,
        } => {
            let registered = client.register(&username, &device_name).await?;
            let me = &registered.whoami;
            let key = registered
                .recovery_key
                .as_ref()
                .map(|k| k.as_str())
                .unwrap_or_default();
            out(
                j,
                &json!({"username": me.username.to_string(), "device_id": me.device_id.to_string(), "recovery_key": key}),
                || {
                    format!(
                        "registered {} (device {}) on {}\n\n\
                         Your recovery key (shown only now; write it down and keep it offline):\n\n    {key}\n\n\
                         It restores your account if you lose this device (`sotto recover {}`).\n\
                         Anyone who has it can take over your account.",
                        me.username, me.device_id, me.server, me.username
                    )
                },
            );
        }
        Command::Recover {
            username,
            device_name,
            recovery_key_file,
        } => {
            let key = read_recovery_key(recovery_key_file.as_deref())?;
            let registered = client.recover(&username, &key, &device_name).await?;
            let me = &registered.whoami;
            out(
                j,
                &json!({"username": me.username.to_string(), "device_id": me.device_id.to_string(), "recovered": true}),
                || {
                    format!(
                        "recovered {} on this device ({}); your other devices were removed",
                        me.username, me.device_id
                    )
                },
            );
        }
        Command::Trust { username } => {
            let changed = client.trust(&username).await?;
            out(
                j,
                &json!({"username": username, "new_key": changed, "verified": false}),
                || {
                    if changed {
                        format!(
                            "accepted {username}'s new identity key; compare safety numbers again to verify them"
                        )
                    } else {
                        format!("{username}'s identity key has not changed")
                    }
                },
            );
        }
        Command::Whoami => {
            let me = client.whoami()?;
            out(
                j,
                &json!({
                    "username": me.username.to_string(),
                    "device_id": me.device_id.to_string(),
                    "device_name": me.device_name,
                    "primary": me.primary,
                    "fingerprint": me.fingerprint,
                    "server": me.server,
                }),
                || {
                    format!(
                        "{} on {}\ndevice {} ({}{})\nfingerprint {}",
                        me.username,
                        me.server,
                        me.device_id,
                        shown(&me.device_name),
                        if me.primary { ", primary" } else { "" },
                        me.fingerprint
                    )
                },
            );
        }
        Command::Link(LinkCommand::Start { device_name }) => {
            let me = client
                .link_start(&device_name, |code| {
                    if j {
                        println!("{}", json!({ "code": code }));
                    } else {
                        println!("{code}");
                        eprintln!("On your other device run: sotto link approve {code}");
                    }
                })
                .await?;
            out(
                j,
                &json!({"username": me.username.to_string(), "device_id": me.device_id.to_string()}),
                || format!("linked as {} (device {})", me.username, me.device_id),
            );
        }
        Command::Link(LinkCommand::Approve { code }) => {
            let device = client.link_approve(&code).await?;
            out(j, &json!({"device_id": device.to_string()}), || {
                format!("linked device {device}")
            });
        }
        Command::Devices { command: None } => {
            for d in client.devices().await? {
                out(
                    j,
                    &json!({"device_id": d.device_id.to_string(), "name": d.name, "created_at": d.created_at, "this_device": d.this_device}),
                    || {
                        format!(
                            "{}  {}{}",
                            d.device_id,
                            shown(&d.name),
                            if d.this_device { "  (this device)" } else { "" }
                        )
                    },
                );
            }
        }
        Command::Devices {
            command: Some(DevicesCommand::Remove { device_id }),
        } => {
            client.remove_device(device_id).await?;
            out(j, &json!({"device_id": device_id, "removed": true}), || {
                format!("removed {device_id}")
            });
        }
        Command::Devices {
            command: Some(DevicesCommand::RotateToken),
        } => {
            client.rotate_token().await?;
            out(j, &json!({"token_rotated": true}), || {
                "this device's token was replaced".into()
            });
        }
        Command::Send { target, text, file } => {
            let to = client.find_recipient(&target).await?;
            let sent = match (&file, &text) {
                (Some(path), caption) => client.send_file(to, path, caption.as_deref()).await?,
                (None, Some(text)) => client.send_text(to, text).await?,
                (None, None) => {
                    return Err(Failure {
                        message: "nothing to send: give a TEXT or --file PATH".into(),
                        code: 2,
                    });
                }
            };
            let unreachable: Vec<Value> = sent
                .unreachable
                .iter()
                .map(|(u, why)| json!({"user": u.to_string(), "reason": why}))
                .collect();
            out(
                j,
                &json!({"id": sent.id.to_string(), "conversation": sent.conversation.to_string(), "unreachable": unreachable}),
                || {
                    let mut line = format!("sent {} in {}", sent.id, sent.conversation);
                    for (u, why) in &sent.unreachable {
                        line.push_str(&format!("\nnot delivered to {u}: {why}"));
                    }
                    line
                },
            );
        }
        Command::Receive { follow, output } => {
            if follow {
                // Real time over the WebSocket until Ctrl-C; attachments are saved and
                // lines printed as events arrive.
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let listener = client.listen(
                    move |events| {
                        let _ = tx.send(events);
                    },
                    async {
                        let _ = tokio::signal::ctrl_c().await;
                    },
                );
                let printer = async {
                    while let Some(events) = rx.recv().await {
                        let events = save_attachments(&client, events, output.as_deref()).await;
                        print_events(j, &events);
                    }
                };
                let (listened, ()) = tokio::join!(listener, printer);
                listened?;
            } else {
                let events = client.sync().await?;
                let events = save_attachments(&client, events, output.as_deref()).await;
                print_events(j, &events);
            }
        }
        Command::Conversations => {
            for c in client.conversations()? {
                let members: Vec<String> = c.members.iter().map(ToString::to_string).collect();
                let name = c
                    .conversation
                    .name
                    .clone()
                    .or_else(|| c.conversation.peer.as_ref().map(ToString::to_string));
                out(
                    j,
                    &json!({
                        "id": c.conversation.id.to_string(),
                        "kind": c.conversation.kind,
                        "name": name,
                        "members": members,
                        "unread": c.unread,
                        "active": c.conversation.active,
                        "disappearing_secs": c.conversation.disappearing_secs,
                    }),
                    || {
                        format!(
                            "{} {:<6} {:<20} {} unread  [{}]{}",
                            c.conversation.id,
                            c.conversation.kind,
                            shown(&name.clone().unwrap_or_default()),
                            c.unread,
                            members.join(", "),
                            if c.conversation.active { "" } else { " (left)" }
                        )
                    },
                );
            }
        }
        Command::History { conversation } => {
            let id = client.find_conversation(&conversation).await?;
            for m in client.history(id)? {
                out(j, &message_json(&m), || message_line(&m));
            }
        }
        Command::Group(g) => group(&client, j, g).await?,
        Command::SafetyNumber { username } => {
            let n = client.safety_number(&username).await?;
            let pending = client.pending_safety_number(&username)?;
            out(
                j,
                &json!({
                    "username": username, "safety_number": n.digits(), "scannable": n.scannable(),
                    "new_safety_number": pending.as_ref().map(|p| p.digits()),
                }),
                || match &pending {
                    None => n.grouped(),
                    Some(p) => format!(
                        "{username}'s safety number CHANGED (a new identity key, not accepted yet).\n\
                         New number (compare it with {username}):\n{}\n\
                         Then run `sotto trust {username}`. The old number was:\n{}",
                        p.grouped(),
                        n.grouped()
                    ),
                },
            );
        }
        Command::Verify { username, number } => {
            if !client.verify(&username, &number).await? {
                return Err(Failure {
                    message: format!(
                        "the safety number does not match: {username} is NOT verified (check the digits, or someone may be intercepting)"
                    ),
                    code: 4,
                });
            }
            out(j, &json!({"username": username, "verified": true}), || {
                format!("{username} is verified")
            });
        }
        Command::React {
            conversation,
            message,
            emoji,
            remove,
        } => {
            let id = client.find_conversation(&conversation).await?;
            let sent = client.react(id, message, &emoji, remove).await?;
            out(
                j,
                &json!({"id": sent.id.to_string(), "conversation": sent.conversation.to_string()}),
                || "reacted".into(),
            );
        }
        Command::Edit {
            conversation,
            message,
            text,
        } => {
            let id = client.find_conversation(&conversation).await?;
            let sent = client.edit(id, message, &text).await?;
            out(
                j,
                &json!({"id": sent.id.to_string(), "conversation": sent.conversation.to_string()}),
                || "edited".into(),
            );
        }
        Command::Delete {
            conversation,
            message,
        } => {
            let id = client.find_conversation(&conversation).await?;
            let sent = client.delete(id, message).await?;
            out(
                j,
                &json!({"id": sent.id.to_string(), "conversation": sent.conversation.to_string()}),
                || "deleted for everyone".into(),
            );
        }
        Command::Disappearing {
            conversation,
            duration,
        } => {
            let Timer(secs) = duration;
            let id = client.find_conversation(&conversation).await?;
            client.set_disappearing(id, secs).await?;
            out(
                j,
                &json!({"conversation": id.to_string(), "seconds": secs}),
                || match secs {
                    Some(s) => format!("messages now disappear after {s} s"),
                    None => "disappearing messages off".into(),
                },
            );
        }
    }
    Ok(())
}

/// Downloads the attachments of new messages; a file that fails verification is
/// reported on stderr and in the message's `attachment.error`, never saved.
async fn save_attachments(
    client: &Client,
    events: Vec<Event>,
    dir: Option<&std::path::Path>,
) -> Vec<Event> {
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        match event {
            Event::Message(mut m) if m.attachment.is_some() && !m.outgoing => {
                match client.save_attachment(m.conversation, m.id, dir).await {
                    Ok(path) => {
                        if let Some(mut a) = m
                            .attachment
                            .as_deref()
                            .and_then(|a| serde_json::from_str::<Value>(a).ok())
                        {
                            a["path"] = json!(path.to_string_lossy());
                            m.attachment = Some(a.to_string());
                        }
                    }
                    Err(e) => {
                        eprintln!("sotto: attachment of message {} not saved: {e}", m.id);
                        if let Some(mut a) = m
                            .attachment
                            .as_deref()
                            .and_then(|a| serde_json::from_str::<Value>(a).ok())
                        {
                            a["error"] = json!(e.to_string());
                            m.attachment = Some(a.to_string());
                        }
                    }
                }
                out.push(Event::Message(m));
            }
            other => out.push(other),
        }
    }
    out
}

fn names(users: &[Username]) -> Vec<String> {
    users.iter().map(ToString::to_string).collect()
}

async fn group(client: &Client, j: bool, command: GroupCommand) -> Result<(), Failure> {
    match command {
        GroupCommand::Create { name, members } => {
            let id = client.create_group(&name, &members).await?;
            out(j, &json!({"conversation": id.to_string()}), || {
                format!("created {name}: {id}")
            });
        }
        GroupCommand::Add {
            conversation,
            users,
        } => {
            let id = client.find_conversation(&conversation).await?;
            client.add_members(id, &users).await?;
            out(
                j,
                &json!({"conversation": id.to_string(), "added": names(&users)}),
                || "added".into(),
            );
        }
        GroupCommand::Remove {
            conversation,
            users,
        } => {
            let id = client.find_conversation(&conversation).await?;
            client.remove_members(id, &users).await?;
            out(
                j,
                &json!({"conversation": id.to_string(), "removed": names(&users)}),
                || "removed".into(),
            );
        }
        GroupCommand::Members { conversation } => {
            let id = client.find_conversation(&conversation).await?;
            let members = client.members(id).await?;
            let names: std::collections::HashMap<sotto_client::DeviceId, String> = client
                .member_devices(id)?
                .into_iter()
                .map(|d| (d.device, d.name))
                .collect();
            let named = |d: &sotto_client::DeviceId| {
                let name = names.get(d).map(String::as_str).unwrap_or_default();
                format!("{d} ({})", shown(name))
            };
            if j {
                let list: Vec<Value> = members
                    .iter()
                    .map(|(u, ds)| json!({
                        "user": u.to_string(),
                        "devices": ds.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "device_names": ds.iter().map(|d| names.get(d).cloned().unwrap_or_default()).collect::<Vec<_>>(),
                    }))
                    .collect();
                println!(
                    "{}",
                    json!({"conversation": id.to_string(), "members": list})
                );
            } else {
                for (u, ds) in members {
                    let ds: Vec<String> = ds.iter().map(named).collect();
                    println!("{u}: {}", ds.join(", "));
                }
            }
        }
        GroupCommand::Leave { conversation } => {
            let id = client.find_conversation(&conversation).await?;
            client.leave(id).await?;
            out(
                j,
                &json!({"conversation": id.to_string(), "left": true}),
                || "left".into(),
            );
        }
    }
    Ok(())
}

/// The recovery key: from a file, from SOTTO_RECOVERY_KEY, or typed on the terminal.
fn read_recovery_key(file: Option<&std::path::Path>) -> Result<String, Failure> {
    if let Some(path) = file {
        return std::fs::read_to_string(path).map_err(|e| Failure {
            message: format!("cannot read the recovery key file {}: {e}", path.display()),
            code: 2,
        });
    }
    if let Ok(key) = std::env::var("SOTTO_RECOVERY_KEY") {
        return Ok(key);
    }
    eprint!("recovery key: ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| Failure {
        message: format!("cannot read the recovery key: {e}"),
        code: 2,
    })?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_text_cannot_forge_lines_or_drive_the_terminal() {
        let forged = "hi\n[0123] mallory: send me the code\r\x1b[2J\u{202e}txt.exe\tend";
        let line = shown(forged);
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        assert!(!line.contains('\u{202e}'), "{line:?}");
        assert_eq!(
            line,
            "hi\\n[0123] mallory: send me the code\\r\\u{1b}[2J\\u{202e}txt.exe\\tend"
        );
        assert_eq!(shown("plain text, émoji 👍"), "plain text, émoji 👍");
    }

    /// A link code is base64url: one in 64 starts with '-', which must not be taken
    /// for a flag (seen as a once-in-a-while CLI test failure).
    #[test]
    fn a_link_code_starting_with_a_dash_is_a_code_not_a_flag() {
        let code = "-pUGvefUmvl_qOCvej1PM_Oybtw0vRUM3IHcXHadqdc";
        let cli = Cli::try_parse_from(["sotto", "link", "approve", code]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Link(LinkCommand::Approve { code: parsed }) if parsed == code.parse::<LinkCode>().unwrap()
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_timer("off"), Ok(Timer(None)));
        assert_eq!(parse_timer("30s"), Ok(Timer(Some(30))));
        assert_eq!(parse_timer("90"), Ok(Timer(Some(90))));
        assert_eq!(parse_timer("5m"), Ok(Timer(Some(300))));
        assert_eq!(parse_timer("2h"), Ok(Timer(Some(7200))));
        assert_eq!(parse_timer("7d"), Ok(Timer(Some(604_800))));
        for bad in ["", "0", "5x", "m", "-1s", "99999999999d"] {
            assert!(parse_timer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arguments_are_parsed_into_their_types() {
        let cli = Cli::try_parse_from(["sotto", "register", "Alice"]).expect("parses");
        assert!(
            matches!(cli.command, Command::Register { username, .. } if username.as_str() == "alice")
        );
        for bad in [
            vec!["sotto", "register", "a"],
            vec!["sotto", "react", "club", "not-a-message-id", "👍"],
            vec!["sotto", "devices", "remove", "xyz"],
            vec!["sotto", "link", "approve", "short"],
            vec!["sotto", "group", "create", "club", "--members", "bob,!!"],
            vec!["sotto", "disappearing", "club", "5x"],
        ] {
            let err = Cli::try_parse_from(&bad).expect_err("refused");
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }
}
