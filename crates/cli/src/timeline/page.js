// Hover on an owner in the legend dims everybody else's bars; a time cursor follows the mouse
// over the drawing. The last lines mark the page as rendered (the browser test reads them).
(function () {
  var root = document.documentElement;
  var svg = document.getElementById('tl');
  var bars = svg.querySelectorAll('.bar');
  document.querySelectorAll('.owner').forEach(function (el) {
    var owner = el.getAttribute('data-owner');
    el.addEventListener('mouseenter', function () {
      bars.forEach(function (b) {
        b.classList.toggle('dim', b.getAttribute('data-owner') !== owner);
      });
    });
    el.addEventListener('mouseleave', function () {
      bars.forEach(function (b) { b.classList.remove('dim'); });
    });
  });
  var cursor = document.getElementById('cursor');
  var label = document.getElementById('cursor-text');
  var x0 = Number(svg.getAttribute('data-x0'));
  var pw = Number(svg.getAttribute('data-pw'));
  var span = Number(svg.getAttribute('data-span'));
  svg.addEventListener('mousemove', function (ev) {
    var pt = svg.createSVGPoint();
    pt.x = ev.clientX;
    pt.y = ev.clientY;
    var p = pt.matrixTransform(svg.getScreenCTM().inverse());
    if (p.x < x0 || p.x > x0 + pw) {
      cursor.style.display = 'none';
      label.textContent = '';
      return;
    }
    cursor.style.display = '';
    cursor.setAttribute('x1', p.x);
    cursor.setAttribute('x2', p.x);
    label.setAttribute('x', p.x + 4);
    label.textContent = '+' + ((p.x - x0) / pw * span / 1e6).toFixed(3) + ' s';
  });
  svg.addEventListener('mouseleave', function () {
    cursor.style.display = 'none';
    label.textContent = '';
  });
  root.setAttribute('data-bars', String(bars.length));
  root.setAttribute('data-timeline', 'ready');
})();
