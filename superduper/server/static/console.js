// The console's only script: the retry button and the search form call the REST API with the key cookie, which
// counts for a change only with the console's header (another site's page cannot send it). Values from the
// server are put in with textContent, never as markup.
'use strict';

const HEADERS = {'X-Superduper-Console': '1', 'Content-Type': 'application/json'};

async function call(url, body) {
  const response = await fetch(url, {method: 'POST', headers: HEADERS, credentials: 'same-origin',
                                     body: JSON.stringify(body)});
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const message = data && data.error ? data.error : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return data;
}

function cell(row, value) {
  const td = document.createElement('td');
  td.textContent = typeof value === 'string' ? value : JSON.stringify(value);
  row.appendChild(td);
}

function setupRetry() {
  const button = document.getElementById('retry');
  if (!button) return;
  const out = document.getElementById('retry-result');
  button.addEventListener('click', async () => {
    button.disabled = true;
    out.className = '';
    out.textContent = 'retrying ...';
    try {
      const data = await call(button.dataset.url, {});
      out.textContent = `retried: ${data.still_failing} row(s) still failing`;
      out.className = data.still_failing ? 'bad' : 'good';
    } catch (e) {
      out.textContent = `refused: ${e.message}`;
      out.className = 'bad';
    } finally {
      button.disabled = false;
    }
  });
}

function showResults(results) {
  const box = document.getElementById('results');
  box.textContent = '';
  if (!results.length) { box.textContent = 'no rows'; return; }
  const columns = [...new Set(results.flatMap(r => Object.keys(r.row)))];
  const table = document.createElement('table');
  const head = table.createTHead().insertRow();
  for (const name of ['score', ...columns]) {
    const th = document.createElement('th');
    th.textContent = name;
    head.appendChild(th);
  }
  const body = table.createTBody();
  for (const r of results) {
    const row = body.insertRow();
    cell(row, r.score === null ? '' : Number(r.score).toFixed(4));
    for (const name of columns) cell(row, r.row[name] === undefined ? '' : r.row[name]);
  }
  box.appendChild(table);
}

function setupSearch() {
  const form = document.getElementById('search');
  if (!form) return;
  const index = document.getElementById('index');
  const key = document.getElementById('key');
  const error = document.getElementById('search-error');
  index.addEventListener('change', () => { key.value = index.selectedOptions[0].dataset.key || ''; });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.textContent = '';
    const body = {query: {[key.value]: form.query.value}, n: Number(form.n.value) || 10};
    try {
      if (form.filter.value.trim()) body.filter = JSON.parse(form.filter.value);
    } catch (e) {
      error.textContent = 'filter: not valid JSON';
      return;
    }
    try {
      const data = await call(`/api/v1/indexes/${encodeURIComponent(index.value)}/search`, body);
      showResults(data.results);
    } catch (e) {
      error.textContent = e.message;
    }
  });
}

setupRetry();
setupSearch();
