// A fingerprinted name: offload serves it with "Cache-Control: public, max-age=31536000, immutable".
const list = document.getElementById("notes");

async function getJson(path) {
  return (await fetch(path)).json();
}

let shownTime = "";

function showTime({ now, servedBy }) {
  if (now <= shownTime) return; // a slower reply (the fetch or an event) must not turn it back
  shownTime = now;
  document.getElementById("time").textContent = `${now} (${servedBy})`;
}

// Notes are only ever added, by this page or another client: list each one once.
function showNote(note) {
  if (list.querySelector(`li[data-id="${note.id}"]`)) return;
  const item = document.createElement("li");
  item.dataset.id = note.id;
  item.textContent = note.text;
  list.append(item);
}

async function showNotes() {
  (await getJson("/api/notes")).forEach(showNote);
}

// Live updates: the app pushes its clock every second and each new note as server-sent events,
// which offload streams through as they come. EventSource reconnects by itself.
function listen() {
  const live = document.getElementById("live");
  const updates = document.getElementById("updates");
  const showState = (state, text) => {
    live.dataset.state = state;
    live.textContent = text;
  };
  const received = (show) => (event) => {
    show(JSON.parse(event.data));
    updates.textContent = Number(updates.textContent) + 1;
  };
  const events = new EventSource("/api/events");
  events.addEventListener("open", () => showState("open", "live"));
  events.addEventListener("error", () => showState("connecting", "reconnecting…"));
  events.addEventListener("time", received(showTime));
  events.addEventListener("note", received(showNote));
}

document.getElementById("add").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  await fetch("/api/notes", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ text: form.text.value }),
  });
  form.reset();
  showNotes();
});

getJson("/api/time").then(showTime);
showNotes();
listen();
