// A fingerprinted name: offload serves it with "Cache-Control: public, max-age=31536000, immutable".
async function showTime() {
  const response = await fetch("/api/time");
  const { now, servedBy } = await response.json();
  document.getElementById("time").textContent = `${now} (${servedBy})`;
}

async function showNotes() {
  const notes = await (await fetch("/api/notes")).json();
  const list = document.getElementById("notes");
  list.replaceChildren(
    ...notes.map((note) => Object.assign(document.createElement("li"), { textContent: note.text })),
  );
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

showTime();
showNotes();
